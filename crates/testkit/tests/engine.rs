//! Engine behaviour under injected faults: a short read is never committed, is retried,
//! and is reported with its key once the tries are used up.

use std::sync::Arc;

use bytes::Bytes;
use georep_core::StoreUrl;
use georep_storage::{run, JobOptions, Mode, ObjectReader, Progress, Store};
use georep_testkit::faults::TruncatingStore;
use object_store::memory::InMemory;

async fn scenario(faults: usize) -> (georep_storage::Report, usize, bool) {
    let inner = Arc::new(InMemory::new());
    let seed = Store::from_object_store("seed", inner.clone());
    seed.put(
        "k/obj",
        ObjectReader::from_bytes(Bytes::from_static(b"0123456789"), Default::default()),
        1 << 20,
        1,
    )
    .await
    .expect("seed");
    let flaky = Arc::new(TruncatingStore::new(inner, faults));
    let src = Arc::new(Store::from_object_store("flaky", flaky.clone()));
    let name = format!("memory://engine-dst-{faults}");
    let dst = Arc::new(
        Store::open(&StoreUrl::parse(&name).expect("url"), &Default::default()).expect("dst"),
    );
    let opts = JobOptions {
        mode: Mode::Copy,
        attempts: 3,
        ..Default::default()
    };
    let report = run(src, dst.clone(), opts, Arc::new(Progress::default()))
        .await
        .expect("run");
    let visible = dst.head("k/obj").await.is_ok();
    (report, flaky.faults_left(), visible)
}

#[tokio::test]
async fn short_reads_are_retried_until_good() {
    let (report, left, visible) = scenario(2).await;
    assert_eq!(report.copied, 1, "{report:?}");
    assert_eq!(report.failed, 0);
    assert_eq!(left, 0, "both faults were served (two failed tries)");
    assert!(visible);
}

#[tokio::test]
async fn persistent_short_reads_fail_the_object_and_commit_nothing() {
    let (report, left, visible) = scenario(10).await;
    assert_eq!(report.copied, 0);
    assert_eq!(report.failed, 1);
    assert_eq!(left, 7, "exactly three tries");
    assert_eq!(report.failures[0].key, "k/obj");
    assert!(
        report.failures[0].error.contains("expected 10"),
        "{:?}",
        report.failures
    );
    assert!(!visible, "a short object never becomes visible");
}
