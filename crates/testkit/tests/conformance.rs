//! The conformance suite against every backend, each a real instance.

use georep_core::StoreUrl;
use georep_storage::{Store, StoreOptions};
use georep_testkit::conformance::{run_all, Caps};
use georep_testkit::{Azurite, Moto};

fn open(url: &str, env: Vec<(String, String)>) -> Store {
    let opts = StoreOptions {
        env: env.into_iter().collect(),
        ..Default::default()
    };
    Store::open(&StoreUrl::parse(url).expect("url"), &opts).expect("open store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path().to_str().expect("utf8"), vec![]);
    run_all(&store, Caps { attributes: false }).await;
    // No temp file is left behind by completed writes.
    let leftovers = georep_testkit::data::files_under(dir.path())
        .into_iter()
        .filter(|p| p.contains(georep_storage::TEMP_PREFIX))
        .count();
    assert_eq!(leftovers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    let store = open("memory://conformance/prefix", vec![]);
    run_all(&store, Caps { attributes: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite() {
    let az = Azurite::start();
    az.create_container("conformance");
    let store = open(&az.url("conformance/some/prefix"), az.env());
    run_all(&store, Caps { attributes: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_moto() {
    let moto = Moto::start();
    moto.create_bucket("conformance");
    let store = open("s3://conformance/some/prefix", moto.env());
    run_all(&store, Caps { attributes: true }).await;
}
