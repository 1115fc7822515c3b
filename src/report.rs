//! `kiln report`: a run's metrics as PNG learning curves and a Markdown summary.

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Series read from metrics.jsonl: kind -> scalar name -> (step, value) points.
type Series = BTreeMap<String, BTreeMap<String, Vec<(f64, f64)>>>;

fn read_metrics(run_dir: &Path) -> Result<Series> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (is {} a kiln run directory?)", path.display(), run_dir.display()))?;
    let mut series: Series = BTreeMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("train").to_string();
        let Some(step) = v.get("step").and_then(Value::as_f64) else { continue };
        for (k, x) in v.as_object().into_iter().flatten() {
            if let (false, Some(x)) = (["step", "time_s", "kind", "steps"].contains(&k.as_str()), x.as_f64()) {
                series.entry(kind.clone()).or_default().entry(k.clone()).or_default().push((step, x));
            }
        }
    }
    if series.is_empty() {
        bail!("{} holds no metrics yet", path.display());
    }
    Ok(series)
}

/// Registers a system TTF font for labels; plots are drawn without text if none exists.
fn have_font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ];
        for c in candidates {
            if let Ok(bytes) = std::fs::read(c) {
                let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn plot(path: &Path, title: &str, lines: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let points: Vec<&(f64, f64)> = lines.iter().flat_map(|(_, p)| p).filter(|(_, y)| y.is_finite()).collect();
    if points.is_empty() {
        bail!("nothing to plot for {title}");
    }
    let (x0, x1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
    let (y0, y1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let text = have_font();
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20).x_label_area_size(40).y_label_area_size(60);
    if text {
        builder.caption(title, ("sans-serif", 24));
    }
    let mut chart = builder.build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("step");
    } else {
        mesh.disable_x_mesh().disable_y_mesh().x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    for (i, (name, pts)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let series = chart.draw_series(LineSeries::new(pts.iter().copied().filter(|(_, y)| y.is_finite()), color.stroke_width(2)))?;
        if text {
            series.label(name.as_str()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
    }
    if text {
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}

/// Training scalars that are shares per step (GRPO/GHPO diagnostics), plotted together.
fn is_share(key: &str) -> bool {
    key == "accuracy" || key == "zero_adv_groups" || key.starts_with("hinted_")
}

/// Writes `loss.png`, `eval.png` (when there are evaluations of AUC or
/// accuracy), `diagnostics.png` (when the run logs shares per step) and
/// `summary.md`.
pub fn render(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let series = read_metrics(run_dir)?;
    let mut out = Vec::new();
    if let Some(loss) = series.get("train").and_then(|t| t.get("loss")) {
        let p = run_dir.join("loss.png");
        plot(&p, "training loss", &[("loss".to_string(), loss.clone())])?;
        out.push(p);
    }
    if let Some(eval) = series.get("eval") {
        let auc: Vec<(String, Vec<(f64, f64)>)> =
            eval.iter().filter(|(k, _)| k.contains("auc")).map(|(k, v)| (k.clone(), v.clone())).collect();
        let accuracy: Vec<(String, Vec<(f64, f64)>)> =
            eval.iter().filter(|(k, _)| k.starts_with("accuracy")).map(|(k, v)| (k.clone(), v.clone())).collect();
        let p = run_dir.join("eval.png");
        if !auc.is_empty() {
            plot(&p, "held-out AUC (oracle = the generator's true probabilities)", &auc)?;
            out.push(p);
        } else if !accuracy.is_empty() {
            plot(&p, "held-out greedy accuracy", &accuracy)?;
            out.push(p);
        }
    }
    if let Some(train) = series.get("train") {
        let shares: Vec<(String, Vec<(f64, f64)>)> =
            train.iter().filter(|(k, _)| is_share(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        if !shares.is_empty() {
            let p = run_dir.join("diagnostics.png");
            plot(&p, "training: accuracy and shares of groups per step", &shares)?;
            out.push(p);
        }
    }
    let md = run_dir.join("summary.md");
    std::fs::write(&md, summary_markdown(run_dir, &series)).with_context(|| format!("writing {}", md.display()))?;
    out.push(md);
    Ok(out)
}

fn last(series: &Series, kind: &str, key: &str) -> Option<(f64, f64)> {
    series.get(kind)?.get(key)?.last().copied()
}

fn summary_markdown(run_dir: &Path, series: &Series) -> String {
    let summary: Value = std::fs::read_to_string(run_dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let mut s = format!("# Run `{}`\n\n", summary.get("name").and_then(Value::as_str).unwrap_or("?"));
    s += &format!(
        "- algorithm: {}\n- ranks: {}\n- steps: {}\n- global batch: {}\n- wall time: {:.1} s\n",
        summary.get("algorithm").and_then(Value::as_str).unwrap_or("?"),
        summary.get("world_size").and_then(Value::as_u64).unwrap_or(0),
        summary.get("steps").and_then(Value::as_u64).unwrap_or(0),
        summary.get("global_batch").and_then(Value::as_u64).unwrap_or(0),
        summary.get("wall_s").and_then(Value::as_f64).unwrap_or(f64::NAN),
    );
    if let Some((step, loss)) = last(series, "train", "loss") {
        s += &format!("- final training loss: {loss:.4} (step {step})\n");
    }
    if let Some(tp) = series.get("train").and_then(|t| t.get("samples_per_s")) {
        let mean = tp.iter().map(|(_, v)| v).sum::<f64>() / tp.len().max(1) as f64;
        s += &format!("- throughput: {mean:.0} samples/s (mean of logged windows)\n");
    }
    if let Some(eval) = series.get("eval") {
        s += "\n| metric | final value |\n|---|---|\n";
        for (k, v) in eval {
            if let Some((_, x)) = v.last() {
                s += &format!("| {k} | {x:.4} |\n");
            }
        }
    }
    s += "\nPlots: `loss.png`, `eval.png`, `diagnostics.png` (where the run has them). Raw data: `metrics.jsonl`.\n";
    s
}

/// A few lines for the terminal at the end of `kiln run`.
pub fn summary_text(run_dir: &Path) -> Result<String> {
    let series = read_metrics(run_dir)?;
    let mut s = String::from("run complete");
    if let Some((step, loss)) = last(&series, "train", "loss") {
        s += &format!(": step {step}, loss {loss:.4}");
    }
    if let Some(eval) = series.get("eval") {
        for (k, v) in eval.iter().filter(|(k, _)| k.starts_with("auc")) {
            if let Some((_, x)) = v.last() {
                s += &format!(", {k} {x:.3}");
            }
        }
    }
    Ok(s)
}
