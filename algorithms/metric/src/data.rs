//! Labelled feature vectors from local files, and their split into the part
//! that trains and the part that is searched.
//!
//! Three layouts: a CSV file (one row a sample, a label column and numeric
//! feature columns), a pair of NPY files (features `[n, …]`, labels `[n]`),
//! and a folder of PNG images with one sub-folder per class (the
//! torchvision `ImageFolder` layout). Every reader names the file and line or
//! entry it cannot use.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Spec(String),
}

fn file_err(path: &Path, message: impl Into<String>) -> DataError {
    DataError::File { path: path.to_path_buf(), message: message.into() }
}

/// Where the samples are, and how they are split.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// A CSV file with a header row.
    pub csv: Option<PathBuf>,
    /// The CSV column holding the class label (any text; classes are
    /// numbered in sorted order).
    #[serde(default = "label")]
    pub label_column: String,
    /// An NPY file of features, `[n, …]` (flattened per sample), any numeric dtype.
    pub npy_features: Option<PathBuf>,
    /// An NPY file of integer labels, `[n]`.
    pub npy_labels: Option<PathBuf>,
    /// A folder of class folders of PNG images (grey, grey+alpha, RGB or
    /// RGBA, 8 or 16 bit; all the same size), scaled to [0, 1].
    pub png_dir: Option<PathBuf>,
    /// `"classes"`: the test classes are never seen in training (the usual
    /// deep-metric-learning protocol); `"samples"`: every class is in both,
    /// `test_fraction` of each class's samples held out.
    #[serde(default)]
    pub holdout: Holdout,
    /// With `holdout = "classes"`: the held-out class names. Default: the
    /// second half of the sorted classes.
    #[serde(default)]
    pub test_classes: Vec<String>,
    #[serde(default = "half")]
    pub test_fraction: f64,
    /// Seed of the sample split (independent of the training seed, so runs
    /// with different seeds are scored on the same samples).
    #[serde(default)]
    pub split_seed: u64,
}

fn label() -> String {
    "label".into()
}

fn half() -> f64 {
    0.5
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Holdout {
    #[default]
    Classes,
    Samples,
}

impl DataSpec {
    /// Checks what can be checked without reading the files.
    pub fn check(&self) -> Result<(), String> {
        let sources = [self.csv.is_some(), self.npy_features.is_some() || self.npy_labels.is_some(), self.png_dir.is_some()];
        if sources.iter().filter(|&&s| s).count() != 1 {
            return Err("give exactly one source: `csv`, `npy_features` + `npy_labels`, or `png_dir`".into());
        }
        if self.npy_features.is_some() != self.npy_labels.is_some() {
            return Err("`npy_features` and `npy_labels` go together".into());
        }
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            return Err(format!("test_fraction = {} must be in (0, 1)", self.test_fraction));
        }
        Ok(())
    }

    /// The spec with relative paths made absolute (for exports read elsewhere).
    pub fn absolute(&self) -> DataSpec {
        let abs = |p: &Option<PathBuf>| p.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
        DataSpec { csv: abs(&self.csv), npy_features: abs(&self.npy_features), npy_labels: abs(&self.npy_labels), png_dir: abs(&self.png_dir), ..self.clone() }
    }
}

/// Samples as rows of `dim` floats, with class indices into `classes`.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub x: Vec<f32>,
    pub dim: usize,
    pub y: Vec<usize>,
    pub classes: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }

    /// Builds a dataset from rows and text labels (classes numbered in sorted order).
    pub fn from_labelled(x: Vec<f32>, dim: usize, labels: Vec<String>) -> Dataset {
        let mut classes = labels.clone();
        classes.sort_by(|a, b| natural(a, b));
        classes.dedup();
        let y = labels.iter().map(|l| classes.binary_search_by(|c| natural(c, l)).unwrap_or(0)).collect();
        Dataset { x, dim, y, classes }
    }
}

/// Numbers compare as numbers ("2" < "10"), other labels as text.
fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y),
        _ => a.cmp(b),
    }
}

/// Reads the samples `spec` names.
pub fn load(spec: &DataSpec) -> Result<Dataset, DataError> {
    spec.check().map_err(DataError::Spec)?;
    let d = if let Some(p) = &spec.csv {
        read_csv(p, &spec.label_column)?
    } else if let (Some(f), Some(l)) = (&spec.npy_features, &spec.npy_labels) {
        read_npy(f, l)?
    } else if let Some(dir) = &spec.png_dir {
        read_png_dir(dir)?
    } else {
        return Err(DataError::Spec("no data source".into()));
    };
    if d.classes.len() < 2 {
        return Err(DataError::Spec(format!("the data has {} class(es); metric learning needs at least 2", d.classes.len())));
    }
    Ok(d)
}

pub fn read_csv(path: &Path, label_column: &str) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e.to_string()))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| file_err(path, "the file is empty; expected a header row"))?;
    let names: Vec<&str> = header.split(',').map(|s| s.trim().trim_matches('"')).collect();
    let li = names.iter().position(|n| *n == label_column).ok_or_else(|| file_err(path, format!("line 1: no column '{label_column}' (columns: {}); set `label_column`", names.join(", "))))?;
    let dim = names.len() - 1;
    if dim == 0 {
        return Err(file_err(path, "line 1: no feature columns besides the label"));
    }
    let (mut x, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in lines {
        let cells: Vec<&str> = line.split(',').map(|s| s.trim().trim_matches('"')).collect();
        if cells.len() != names.len() {
            return Err(file_err(path, format!("line {}: {} cells, the header has {}", i + 1, cells.len(), names.len())));
        }
        for (j, c) in cells.iter().enumerate() {
            if j == li {
                labels.push(c.to_string());
            } else {
                let v: f32 = c.parse().map_err(|_| file_err(path, format!("line {}: column '{}' holds '{c}', not a number", i + 1, names[j])))?;
                if !v.is_finite() {
                    return Err(file_err(path, format!("line {}: column '{}' is not finite", i + 1, names[j])));
                }
                x.push(v);
            }
        }
    }
    if labels.is_empty() {
        return Err(file_err(path, "no sample rows after the header"));
    }
    Ok(Dataset::from_labelled(x, dim, labels))
}

pub fn read_npy(features: &Path, labels: &Path) -> Result<Dataset, DataError> {
    let f = tch::Tensor::read_npy(features).map_err(|e| file_err(features, format!("not a readable NPY file: {e}")))?;
    let l = tch::Tensor::read_npy(labels).map_err(|e| file_err(labels, format!("not a readable NPY file: {e}")))?;
    let n = *f.size().first().ok_or_else(|| file_err(features, "a scalar; expected [samples, features…]"))?;
    if l.size() != [n] {
        return Err(file_err(labels, format!("shape {:?}; expected [{n}], one label per row of {}", l.size(), features.display())));
    }
    if l.is_floating_point() {
        return Err(file_err(labels, "floating-point labels; expected an integer dtype"));
    }
    let x: Vec<f32> = Vec::try_from(f.to_kind(tch::Kind::Float).reshape([n, -1]).reshape([-1])).map_err(|e: tch::TchError| file_err(features, e.to_string()))?;
    let y: Vec<i64> = Vec::try_from(l.to_kind(tch::Kind::Int64)).map_err(|e: tch::TchError| file_err(labels, e.to_string()))?;
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(file_err(features, format!("sample {} holds a value that is not finite", i / (x.len() / n as usize).max(1))));
    }
    let dim = if n == 0 { 0 } else { x.len() / n as usize };
    Ok(Dataset::from_labelled(x, dim, y.iter().map(|v| v.to_string()).collect()))
}

pub fn read_png_dir(dir: &Path) -> Result<Dataset, DataError> {
    let mut class_dirs: Vec<PathBuf> = std::fs::read_dir(dir).map_err(|e| file_err(dir, e.to_string()))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    class_dirs.sort();
    if class_dirs.is_empty() {
        return Err(file_err(dir, "no class folders; expected <dir>/<class>/<image>.png"));
    }
    let (mut x, mut labels, mut dim) = (Vec::new(), Vec::new(), None);
    for cd in &class_dirs {
        let class = cd.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let mut files: Vec<PathBuf> = std::fs::read_dir(cd).map_err(|e| file_err(cd, e.to_string()))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"))).collect();
        files.sort();
        for f in files {
            let pixels = read_png(&f)?;
            match dim {
                None => dim = Some(pixels.len()),
                Some(d) if d != pixels.len() => return Err(file_err(&f, format!("{} values; the first image had {d} (all images must have one size and colour type)", pixels.len()))),
                _ => {}
            }
            x.extend(pixels);
            labels.push(class.clone());
        }
    }
    let dim = dim.ok_or_else(|| file_err(dir, "no .png files in the class folders"))?;
    Ok(Dataset::from_labelled(x, dim, labels))
}

/// One image's samples in [0, 1], channel-interleaved.
fn read_png(path: &Path) -> Result<Vec<f32>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| file_err(path, e.to_string()))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| file_err(path, format!("not a readable PNG: {e}")))?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| file_err(path, format!("not a readable PNG: {e}")))?;
    let bytes = &buf[..info.buffer_size()];
    Ok(match info.bit_depth {
        png::BitDepth::Sixteen => bytes.chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]]) as f32 / 65535.0).collect(),
        _ => bytes.iter().map(|&b| b as f32 / 255.0).collect(),
    })
}

/// Which samples train and which are searched.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

pub fn split(d: &Dataset, spec: &DataSpec) -> Result<Split, DataError> {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    match spec.holdout {
        Holdout::Classes => {
            let held: Vec<usize> = if spec.test_classes.is_empty() {
                (d.classes.len() / 2..d.classes.len()).collect()
            } else {
                spec.test_classes.iter().map(|c| d.classes.iter().position(|k| k == c).ok_or_else(|| DataError::Spec(format!("test_classes: no class '{c}' in the data (classes: {})", d.classes.join(", "))))).collect::<Result<_, _>>()?
            };
            for (i, &y) in d.y.iter().enumerate() {
                if held.contains(&y) {
                    test.push(i)
                } else {
                    train.push(i)
                }
            }
        }
        Holdout::Samples => {
            for c in 0..d.classes.len() {
                let mut rows: Vec<usize> = (0..d.len()).filter(|&i| d.y[i] == c).collect();
                let order = kiln_worker::rng::shuffled(rows.len(), spec.split_seed ^ c as u64, 0);
                rows = order.into_iter().map(|k| rows[k]).collect();
                let k = ((rows.len() as f64) * spec.test_fraction).round() as usize;
                test.extend_from_slice(&rows[..k]);
                train.extend_from_slice(&rows[k..]);
            }
            train.sort_unstable();
            test.sort_unstable();
        }
    }
    let classes_in = |rows: &[usize]| {
        let mut c: Vec<usize> = rows.iter().map(|&i| d.y[i]).collect();
        c.sort_unstable();
        c.dedup();
        c.len()
    };
    if classes_in(&train) < 2 || classes_in(&test) < 2 {
        return Err(DataError::Spec(format!("the split leaves {} training and {} test classes; each side needs 2 or more", classes_in(&train), classes_in(&test))));
    }
    Ok(Split { train, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_csv(p: &Path) -> DataSpec {
        DataSpec { csv: Some(p.into()), label_column: "label".into(), npy_features: None, npy_labels: None, png_dir: None, holdout: Holdout::Classes, test_classes: vec![], test_fraction: 0.5, split_seed: 0 }
    }

    #[test]
    fn csv_rows_and_the_two_holdouts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        let mut s = String::from("f0,label,f1\n");
        for i in 0..40 {
            s += &format!("{},{},{}\n", i, i % 4 * 5, -i);
        }
        std::fs::write(&p, s).unwrap();
        let d = load(&spec_csv(&p)).unwrap();
        assert_eq!((d.len(), d.dim), (40, 2));
        assert_eq!(d.classes, ["0", "5", "10", "15"]);
        assert_eq!(d.row(3), [3.0, -3.0]);
        let s = split(&d, &spec_csv(&p)).unwrap();
        assert!(s.train.iter().all(|&i| d.y[i] < 2) && s.test.iter().all(|&i| d.y[i] >= 2));
        let spec = DataSpec { holdout: Holdout::Samples, test_fraction: 0.3, ..spec_csv(&p) };
        let s = split(&d, &spec).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (28, 12));
        assert!((0..4).all(|c| s.test.iter().filter(|&&i| d.y[i] == c).count() == 3));
        assert_eq!(s, split(&d, &spec).unwrap());
    }

    #[test]
    fn bad_files_are_named_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        std::fs::write(&p, "a,label\n1,x\noops,y\n").unwrap();
        let e = load(&spec_csv(&p)).unwrap_err().to_string();
        assert!(e.contains("d.csv") && e.contains("line 3") && e.contains("'oops'"), "{e}");
        std::fs::write(&p, "a,b\n1,2\n").unwrap();
        let e = load(&spec_csv(&p)).unwrap_err().to_string();
        assert!(e.contains("no column 'label'"), "{e}");
        let spec = DataSpec { png_dir: Some(dir.path().into()), ..spec_csv(&p) };
        assert!(spec.check().unwrap_err().contains("exactly one"));
    }

    #[test]
    fn npy_pairs_and_png_folders_load() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.npy");
        let l = dir.path().join("y.npy");
        tch::Tensor::arange(24, (tch::Kind::Double, tch::Device::Cpu)).view([6, 2, 2]).write_npy(&f).unwrap();
        tch::Tensor::from_slice(&[1i64, 0, 1, 0, 2, 2]).write_npy(&l).unwrap();
        let d = read_npy(&f, &l).unwrap();
        assert_eq!((d.len(), d.dim, d.classes.len()), (6, 4, 3));
        assert_eq!((d.row(1), d.y[1]), (&[4.0f32, 5.0, 6.0, 7.0][..], 0));
        tch::Tensor::from_slice(&[1i64, 0]).write_npy(&l).unwrap();
        assert!(read_npy(&f, &l).unwrap_err().to_string().contains("expected [6]"));
        for (class, shade) in [("cat", 0u8), ("dog", 255u8)] {
            std::fs::create_dir_all(dir.path().join("img").join(class)).unwrap();
            for k in 0..2u8 {
                let file = std::fs::File::create(dir.path().join("img").join(class).join(format!("{k}.png"))).unwrap();
                let mut enc = png::Encoder::new(file, 3, 2);
                enc.set_color(png::ColorType::Grayscale);
                enc.set_depth(png::BitDepth::Eight);
                enc.write_header().unwrap().write_image_data(&[shade, k, shade, k, shade, k]).unwrap();
            }
        }
        let d = read_png_dir(&dir.path().join("img")).unwrap();
        assert_eq!((d.len(), d.dim, d.classes.clone()), (4, 6, vec!["cat".to_string(), "dog".into()]));
        assert_eq!(d.row(3)[0], 1.0);
        assert!((d.row(3)[1] - 1.0 / 255.0).abs() < 1e-7);
    }
}
