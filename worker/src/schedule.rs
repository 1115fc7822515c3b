//! Learning-rate schedules, as pure functions of the step (so a resumed run
//! needs no schedule state).

use crate::spec::ScheduleSpec;

/// The learning rate at 0-based optimizer `step` of `total`.
pub fn lr_at(schedule: &ScheduleSpec, base: f64, step: u64, total: u64) -> f64 {
    match *schedule {
        ScheduleSpec::Constant => base,
        ScheduleSpec::WarmupCosine { warmup_steps, min_lr_ratio } => {
            if step < warmup_steps {
                return base * (step + 1) as f64 / warmup_steps as f64;
            }
            let span = total.saturating_sub(warmup_steps).max(1) as f64;
            let progress = ((step - warmup_steps) as f64 / span).min(1.0);
            let min = base * min_lr_ratio;
            min + (base - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_is_constant() {
        assert_eq!(lr_at(&ScheduleSpec::Constant, 0.1, 57, 100), 0.1);
    }

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let s = ScheduleSpec::WarmupCosine { warmup_steps: 10, min_lr_ratio: 0.1 };
        assert!((lr_at(&s, 1.0, 0, 110) - 0.1).abs() < 1e-12);
        assert!((lr_at(&s, 1.0, 9, 110) - 1.0).abs() < 1e-12);
        assert!((lr_at(&s, 1.0, 10, 110) - 1.0).abs() < 1e-12);
        assert!((lr_at(&s, 1.0, 60, 110) - 0.55).abs() < 1e-12);
        assert!((lr_at(&s, 1.0, 110, 110) - 0.1).abs() < 1e-12);
        let mut prev = f64::INFINITY;
        for step in 10..110 {
            let lr = lr_at(&s, 1.0, step, 110);
            assert!(lr <= prev);
            prev = lr;
        }
    }
}
