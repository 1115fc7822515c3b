//! Stop requests: SIGTERM (SLURM, `kill`), SIGUSR1 (SLURM's pre-timeout warning,
//! forwarded by mpirun) and SIGINT set one flag. The training loop reads it at
//! every step boundary and all ranks agree on it through a collective, so they
//! checkpoint the same step and exit together with `EXIT_PREEMPTED`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The flag set by a stop signal.
#[derive(Clone)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Installs handlers for SIGTERM, SIGUSR1 and SIGINT.
    pub fn install() -> std::io::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, flag.clone())?;
        }
        Ok(StopFlag(flag))
    }

    /// A flag no signal sets (tests, embedded use).
    pub fn manual() -> Self {
        StopFlag(Arc::new(AtomicBool::new(false)))
    }

    pub fn raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub fn raise(&self) {
        self.0.store(true, Ordering::SeqCst)
    }
}
