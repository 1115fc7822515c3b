//! The job store on real SQLite files.

use kiln_coordinator::lifecycle::{AttemptCause, Event, JobStatus};
use kiln_coordinator::store::{NewJob, Store};
use kiln_coordinator::CoordinatorError;

fn job(name: &str, priority: i64, key: Option<&str>) -> NewJob {
    NewJob {
        name: name.into(),
        spec: format!("name = \"{name}\""),
        priority,
        max_restarts: 1,
        idempotency_key: key.map(str::to_string),
        backend: "local".into(),
        ranks: 2,
        gpus: 0,
        worker_token: format!("token-{name}"),
    }
}

#[test]
fn jobs_survive_reopening_and_the_schema_is_migrated_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    let id = {
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), 3);
        s.submit(&job("a", 0, None)).unwrap()
    };
    let s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), 3);
    let j = s.get(id).unwrap();
    assert_eq!((j.name.as_str(), j.status, j.restarts, j.attempts), ("a", JobStatus::Queued, 0, 0));
    assert!(matches!(s.get(id + 100), Err(CoordinatorError::NoSuchJob(_))));
}

#[test]
fn a_store_from_a_newer_kiln_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    drop(Store::open(&path).unwrap());
    rusqlite::Connection::open(&path).unwrap().pragma_update(None, "user_version", 99i64).unwrap();
    match Store::open(&path) {
        Err(CoordinatorError::SchemaTooNew { found: 99, .. }) => {}
        other => panic!("expected SchemaTooNew, got {:?}", other.err()),
    }
}

#[test]
fn queue_order_is_priority_then_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("kiln.db")).unwrap();
    let a = s.submit(&job("a", 0, None)).unwrap();
    let b = s.submit(&job("b", 5, None)).unwrap();
    let c = s.submit(&job("c", 0, None)).unwrap();
    let d = s.submit(&job("d", 5, None)).unwrap();
    let order: Vec<i64> = s.list(Some(JobStatus::Queued)).unwrap().iter().map(|j| j.id).collect();
    assert_eq!(order, vec![b, d, a, c]);
    s.apply(b, &Event::Launch { attempt: 1 }).unwrap();
    let order: Vec<i64> = s.list(Some(JobStatus::Queued)).unwrap().iter().map(|j| j.id).collect();
    assert_eq!(order, vec![d, a, c]);
    assert_eq!(s.list(None).unwrap().len(), 4);
}

#[test]
fn idempotent_resubmission_returns_the_same_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("kiln.db")).unwrap();
    let a = s.submit(&job("a", 0, Some("client-1"))).unwrap();
    let again = s.submit(&job("a", 0, Some("client-1"))).unwrap();
    let other = s.submit(&job("a", 0, Some("client-2"))).unwrap();
    assert_eq!(a, again);
    assert_ne!(a, other);
    assert_eq!(s.list(None).unwrap().len(), 2);
}

#[test]
fn lifecycle_with_a_restart_then_failure_is_recorded_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("kiln.db")).unwrap();
    let id = s.submit(&job("r", 0, None)).unwrap(); // max_restarts = 1
    let crash = AttemptCause::Signal { signal: 9 };
    let steps = [
        (Event::Launch { attempt: 1 }, JobStatus::Launching),
        (Event::Started { attempt: 1 }, JobStatus::Running),
        (Event::AttemptEnded { attempt: 1, cause: crash.clone() }, JobStatus::Queued),
        (Event::Launch { attempt: 2 }, JobStatus::Launching),
        (Event::Started { attempt: 2 }, JobStatus::Running),
        (Event::AttemptEnded { attempt: 2, cause: AttemptCause::Preempted }, JobStatus::Queued),
        (Event::Launch { attempt: 3 }, JobStatus::Launching),
        (Event::AttemptEnded { attempt: 3, cause: crash }, JobStatus::Failed),
    ];
    for (event, want) in &steps {
        assert_eq!(s.apply(id, event).unwrap(), *want, "{event:?}");
    }
    let j = s.get(id).unwrap();
    assert_eq!((j.status, j.restarts, j.attempts), (JobStatus::Failed, 1, 3));
    assert_eq!((j.backend.as_str(), j.ranks, j.gpus), ("local", 2, 0));
    assert_eq!(s.worker_token(id).unwrap(), "token-r");
    let attempts = s.attempts(id).unwrap();
    assert_eq!(attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(attempts.iter().all(|a| a.ended_ms.is_some() && a.handle.is_none()));
    assert_eq!(attempts[1].cause.as_ref().and_then(|c| c["cause"].as_str()), Some("preempted"));
    let events = s.events(id).unwrap();
    assert_eq!(events.len(), steps.len());
    for (rec, (event, status)) in events.iter().zip(&steps) {
        assert_eq!((&rec.event, rec.status), (event, *status));
    }
    // A late report changes nothing: neither about a finished job, nor about an
    // attempt that is not the current one.
    let other = s.submit(&job("late", 0, None)).unwrap();
    s.apply(other, &Event::Launch { attempt: 1 }).unwrap();
    s.apply(other, &Event::AttemptEnded { attempt: 1, cause: AttemptCause::Lost }).unwrap();
    s.apply(other, &Event::Launch { attempt: 2 }).unwrap();
    let stale = Event::AttemptEnded { attempt: 1, cause: AttemptCause::Exited { code: 0 } };
    assert!(s.apply(other, &stale).is_err());
    assert!(s.apply(other, &Event::Launch { attempt: 4 }).is_err());
    assert_eq!(s.get(other).unwrap().status, JobStatus::Launching);
    s.set_attempt_handle(other, 2, "4242", "/logs/attempt-2.log").unwrap();
    let live = s.attempts(other).unwrap();
    assert_eq!((live[1].handle.as_deref(), live[1].ended_ms), (Some("4242"), None));
    s.apply(other, &Event::Cancel).unwrap();
    assert!(s.attempts(other).unwrap()[1].ended_ms.is_some());
    let err = s.apply(id, &Event::Cancel).unwrap_err();
    assert!(err.to_string().contains("is failed"), "{err}");
    assert_eq!(s.get(id).unwrap().status, JobStatus::Failed);
    assert_eq!(s.events(id).unwrap().len(), steps.len());
}

#[test]
fn latest_metrics_replace_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("kiln.db")).unwrap();
    let id = s.submit(&job("m", 0, None)).unwrap();
    assert_eq!(s.metrics(id).unwrap(), None);
    s.put_metrics(id, 10, r#"{"loss":1.0}"#).unwrap();
    s.put_metrics(id, 20, r#"{"loss":0.5}"#).unwrap();
    assert_eq!(s.metrics(id).unwrap(), Some((20, r#"{"loss":0.5}"#.to_string())));
}

#[test]
fn concurrent_writers_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.db");
    drop(Store::open(&path).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut s = Store::open(&path).unwrap();
                let mut ids = Vec::new();
                for i in 0..250 {
                    let key = format!("t{t}-{i}");
                    let id = s.submit(&job("c", 0, Some(&key))).unwrap();
                    // A client retry after a timeout: the same key again.
                    assert_eq!(s.submit(&job("c", 0, Some(&key))).unwrap(), id);
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut all: Vec<i64> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 1000);
    assert_eq!(Store::open(&path).unwrap().list(None).unwrap().len(), 1000);
}
