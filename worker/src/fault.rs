//! Test-only fault injection, for faults real parts cannot produce on demand.
//!
//! `KILN_FAULT` holds comma-separated faults:
//! - `kill-rank:<r>:after-step:<n>` — rank r sends itself SIGKILL once n optimizer
//!   steps are done (a node dying mid-run);
//! - `stop-rank:<r>:after-step:<n>` — rank r raises its stop flag then (as if SIGTERM
//!   had arrived on that rank only);
//! - `ckpt-crash:<point>` — handled by the checkpoint store.

use crate::signals::StopFlag;

/// Applies any fault scheduled for `rank` after `steps_done` steps.
pub fn after_step(rank: usize, steps_done: u64, stop: &StopFlag) {
    let Ok(spec) = std::env::var("KILN_FAULT") else { return };
    for f in spec.split(',') {
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
                _ => {}
            }
        }
    }
}
