//! Test-only fault injection, for faults real parts cannot produce on demand.
//!
//! `KILN_FAULT` holds comma-separated faults:
//! - `kill-rank:<r>:after-step:<n>` — rank r sends itself SIGKILL once n optimizer
//!   steps are done (a node dying mid-run);
//! - `stop-rank:<r>:after-step:<n>` — rank r raises its stop flag then (as if SIGTERM
//!   had arrived on that rank only);
//! - `hang-rank:<r>:after-step:<n>` — rank r stops making progress before the next
//!   collective (sleeps for good), while its heartbeat thread keeps reporting: the
//!   hang the coordinator's watchdog must detect and attribute;
//! - `slow-rank:<r>:ms:<n>` — rank r computes n ms longer every step (a straggler);
//! - `ckpt-crash:<point>` — handled by the checkpoint store.
//!
//! With `KILN_FAULT_ATTEMPT=<n>`, faults fire only in attempt n of a coordinator
//! job (so the restarted attempt can finish).

use crate::signals::StopFlag;

/// The faults for this process, read once: they are consulted every step.
fn faults() -> &'static [String] {
    static FAULTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FAULTS.get_or_init(|| {
        let Ok(spec) = std::env::var("KILN_FAULT") else { return vec![] };
        if let Ok(only) = std::env::var("KILN_FAULT_ATTEMPT") {
            if only.parse::<u32>().ok() != crate::heartbeat::attempt_from_env() {
                return vec![];
            }
        }
        spec.split(',').map(str::to_string).collect()
    })
}

/// Delays `rank` inside its step when it is scheduled to straggle.
pub fn during_step(rank: usize) {
    for f in faults() {
        let parts: Vec<&str> = f.split(':').collect();
        if let ["slow-rank", r, "ms", n] = parts[..] {
            if let (Ok(r), Ok(n)) = (r.parse::<usize>(), n.parse::<u64>()) {
                if r == rank {
                    std::thread::sleep(std::time::Duration::from_millis(n));
                }
            }
        }
    }
}

/// Applies any fault scheduled for `rank` after `steps_done` steps.
pub fn after_step(rank: usize, steps_done: u64, stop: &StopFlag) {
    for f in faults() {
        let parts: Vec<&str> = f.split(':').collect();
        if let [what, r, "after-step", n] = parts[..] {
            let (Ok(r), Ok(n)) = (r.parse::<usize>(), n.parse::<u64>()) else { continue };
            if r != rank || n != steps_done {
                continue;
            }
            match what {
                "kill-rank" => {
                    eprintln!("KILN_FAULT: rank {rank} killing itself after step {steps_done}");
                    // SAFETY: raise() has no preconditions; SIGKILL ends the process.
                    unsafe {
                        libc::raise(libc::SIGKILL);
                    }
                }
                "stop-rank" => stop.raise(),
                "hang-rank" => {
                    eprintln!("KILN_FAULT: rank {rank} hanging after step {steps_done}");
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
                _ => {}
            }
        }
    }
}
