//! From a submitted spec to a job the coordinator can run: parse and check it,
//! decide what it occupies, refuse what can never run, and write the effective
//! spec each attempt starts from (its checkpoints under the coordinator's store).

use crate::config::{Capacity, Config};
use crate::schedule::fits_at_all;
use kiln_worker::spec::{Backend, JobSpec};
use std::sync::Arc;

/// Checks the parts of a spec only the binary knows (is the algorithm linked in,
/// is its `[algorithm]` table valid). Returns a message naming the field.
/// Arguments: the parsed spec, its text (for line numbers), the name to cite.
pub type SpecCheck = Arc<dyn Fn(&JobSpec, &str, &str) -> Result<(), String> + Send + Sync>;

/// Why a submission is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The spec is malformed or inconsistent (HTTP 400).
    Invalid(String),
    /// The spec is fine but can never run here (HTTP 422).
    Impossible(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::Invalid(m) | Refusal::Impossible(m) => m,
        }
    }
}

/// A checked job.
#[derive(Debug, Clone)]
pub struct JobPlan {
    pub spec: JobSpec,
    pub backend: Backend,
    pub ranks: u32,
    pub gpus: u32,
}

/// Parses and checks a submitted spec against this coordinator.
pub fn plan(text: &str, cfg: &Config, slurm_enabled: bool, check: &SpecCheck) -> Result<JobPlan, Refusal> {
    let origin = "job.toml";
    let spec = JobSpec::parse(text, origin).map_err(Refusal::Invalid)?;
    check(&spec, text, origin).map_err(Refusal::Invalid)?;
    let r = &spec.resources;
    let too_big = || Refusal::Invalid(format!("{origin}: [resources] asks for more ranks or GPUs than any machine has"));
    let world = r.nodes.checked_mul(r.ranks_per_node).ok_or_else(too_big)?;
    let ranks = u32::try_from(world).map_err(|_| too_big())?;
    let gpus = world.checked_mul(r.gpus_per_rank).and_then(|g| u32::try_from(g).ok()).ok_or_else(too_big)?;
    spec.check_world(world).map_err(|e| Refusal::Invalid(format!("{origin}: {e}")))?;
    if kiln_cluster::checkpoint::is_process_local(&spec.checkpoint.store) && world > 1 {
        return Err(Refusal::Invalid(format!(
            "{origin}: checkpoint.store = \"{}\" lives inside one process; leave it unset under a coordinator (checkpoints go to the coordinator's store)",
            spec.checkpoint.store
        )));
    }
    let store = &spec.checkpoint.store;
    if *store != kiln_worker::spec::CheckpointSpec::default().store && !store.contains("://") && !store.starts_with('/') {
        return Err(Refusal::Invalid(format!(
            "{origin}: checkpoint.store = \"{store}\" is a relative path, which means nothing to a coordinator (relative to what?); use an absolute path every node sees, file:///…, or s3://…"
        )));
    }
    match spec.launch.backend {
        Backend::Local => check_local(&spec, cfg.capacity, ranks, gpus)?,
        Backend::Slurm if !slurm_enabled => {
            return Err(Refusal::Impossible(
                "[launch] backend = \"slurm\" but this coordinator has no SLURM (sbatch not found); ask its operator, or use backend = \"local\"".into(),
            ))
        }
        Backend::Slurm => {
            // Render a draft script now so SLURM-specific mistakes (time format,
            // partition names) are refused at submission, not at launch.
            let draft = crate::launch::slurm::request(&spec, "job.toml".as_ref(), "run".as_ref(), "kiln".as_ref(), vec![]);
            draft.validate().map_err(|e| Refusal::Invalid(format!("{origin}: [resources]/[launch]: {e}")))?;
        }
    }
    Ok(JobPlan { backend: spec.launch.backend, spec, ranks, gpus })
}

fn check_local(spec: &JobSpec, cap: Capacity, ranks: u32, gpus: u32) -> Result<(), Refusal> {
    if spec.resources.nodes > 1 {
        return Err(Refusal::Impossible(format!(
            "job.toml: resources.nodes = {} but the local backend runs on the coordinator's host only; set [launch] backend = \"slurm\" for multi-node jobs",
            spec.resources.nodes
        )));
    }
    if !fits_at_all(cap, ranks, gpus) {
        return Err(Refusal::Impossible(format!(
            "job.toml: the job needs {ranks} rank slot(s) and {gpus} GPU(s) at once, but this host offers {} slot(s) and {} GPU(s): it could never start. Ask for fewer ranks, or use backend = \"slurm\"",
            cap.slots, cap.gpus
        )));
    }
    Ok(())
}

/// The checkpoint store of job `id`: under the spec's own store when it names one,
/// else under the coordinator's, always in a directory of the job's own (two jobs
/// with the same run name must never resume from each other's checkpoints).
pub fn job_store(spec: &JobSpec, cfg: &Config, id: i64) -> String {
    let default = kiln_worker::spec::CheckpointSpec::default().store;
    let base = if spec.checkpoint.store == default { cfg.store.as_str() } else { spec.checkpoint.store.as_str() };
    format!("{}/jobs/{id}", base.trim_end_matches('/'))
}

/// The spec an attempt of job `id` runs: the submitted one with the job's store.
pub fn effective_spec(text: &str, spec: &JobSpec, cfg: &Config, id: i64) -> Result<String, String> {
    let mut table: toml::Table = text.parse().map_err(|e| format!("re-reading the stored spec of job {id}: {e}"))?;
    let ckpt = table
        .entry("checkpoint")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(ckpt) = ckpt.as_table_mut() else {
        return Err(format!("job {id}: [checkpoint] is not a table"));
    };
    ckpt.insert("store".into(), toml::Value::String(job_store(spec, cfg, id)));
    toml::to_string(&table).map_err(|e| format!("writing the effective spec of job {id}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const SPEC: &str = r#"
name = "t"
[resources]
ranks_per_node = 2
[train]
steps = 10
global_batch = 8
[algorithm]
name = "recsys.mmoe"
"#;

    fn cfg() -> Config {
        let mut c = Config::new("127.0.0.1:0".parse().unwrap(), PathBuf::from("/state"), vec![], PathBuf::from("kiln"));
        c.capacity = Capacity { slots: 2, gpus: 0 };
        c
    }

    fn ok_check() -> SpecCheck {
        Arc::new(|_, _, _| Ok(()))
    }

    #[test]
    fn a_fitting_job_is_planned() {
        let p = plan(SPEC, &cfg(), false, &ok_check()).unwrap();
        assert_eq!((p.ranks, p.gpus, p.backend), (2, 0, Backend::Local));
    }

    #[test]
    fn jobs_that_can_never_fit_are_refused_with_the_numbers() {
        let big = SPEC.replace("ranks_per_node = 2", "ranks_per_node = 4");
        match plan(&big, &cfg(), false, &ok_check()) {
            Err(Refusal::Impossible(m)) => assert!(m.contains("4 rank slot(s)") && m.contains("2 slot(s)"), "{m}"),
            other => panic!("{other:?}"),
        }
        let multi = SPEC.replace("ranks_per_node = 2", "ranks_per_node = 1\nnodes = 2");
        assert!(matches!(plan(&multi, &cfg(), false, &ok_check()), Err(Refusal::Impossible(m)) if m.contains("slurm")));
        let slurm = format!("{SPEC}\n[launch]\nbackend = \"slurm\"\n").replace("[algorithm]\nname = \"recsys.mmoe\"\n", "");
        let slurm = format!("{slurm}\n[algorithm]\nname = \"recsys.mmoe\"\n");
        assert!(matches!(plan(&slurm, &cfg(), false, &ok_check()), Err(Refusal::Impossible(_))));
        assert!(plan(&slurm, &cfg(), true, &ok_check()).is_ok());
    }

    #[test]
    fn invalid_specs_and_algorithm_errors_are_refused_as_invalid() {
        assert!(matches!(plan("name = 3", &cfg(), false, &ok_check()), Err(Refusal::Invalid(_))));
        let traversal = SPEC.replace("name = \"t\"", "name = \"../../etc\"");
        assert!(matches!(plan(&traversal, &cfg(), false, &ok_check()), Err(Refusal::Invalid(m)) if m.contains("run name")));
        let relative = SPEC.replace("[train]", "[checkpoint]\nstore = \"ckpts\"\n[train]");
        assert!(matches!(plan(&relative, &cfg(), false, &ok_check()), Err(Refusal::Invalid(m)) if m.contains("relative path")));
        let no: SpecCheck = Arc::new(|_, _, o| Err(format!("{o}: unknown algorithm")));
        assert!(matches!(plan(SPEC, &cfg(), false, &no), Err(Refusal::Invalid(m)) if m.contains("unknown algorithm")));
    }

    #[test]
    fn each_job_gets_its_own_store_directory() {
        let p = plan(SPEC, &cfg(), false, &ok_check()).unwrap();
        assert_eq!(job_store(&p.spec, &cfg(), 7), "file:///state/store/jobs/7");
        let own = SPEC.replace("[train]", "[checkpoint]\nstore = \"s3://bucket/runs/\"\n[train]");
        let p = plan(&own, &cfg(), false, &ok_check()).unwrap();
        assert_eq!(job_store(&p.spec, &cfg(), 7), "s3://bucket/runs/jobs/7");
        let eff = effective_spec(&own, &p.spec, &cfg(), 7).unwrap();
        let back = JobSpec::parse(&eff, "eff").unwrap();
        assert_eq!(back.checkpoint.store, "s3://bucket/runs/jobs/7");
        assert_eq!(back.train, p.spec.train);
    }
}
