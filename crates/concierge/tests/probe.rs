//! MQTT probes against a real Mosquitto 2 with dynamic security (the testkit starts it
//! on a free loopback port): a round trip with the admin account, a wrong password
//! named as such, a broker killed and started again.

use std::time::Duration;

use georep_concierge::probe::round_trip;
use georep_testkit::Mosquitto;

#[tokio::test]
async fn a_probe_is_a_real_round_trip_and_says_why_it_failed() {
    let hub = Mosquitto::start();
    let (user, pw) = hub.admin();
    let t = Duration::from_secs(5);
    // The probe account may use georep/probe/# (what georep sets up on a hub).
    hub.allow_probes();
    let took = round_trip(&hub.url(), Some((&user, &pw)), t)
        .await
        .expect("a round trip with the admin account");
    assert!(took.took < t);

    let e = round_trip(&hub.url(), Some((&user, "wrong")), t)
        .await
        .expect_err("a wrong password");
    assert!(e.0.contains("check the hub's username and password"), "{e}");
    let e = round_trip(&hub.url(), None, t)
        .await
        .expect_err("anonymous");
    assert!(e.0.contains("refused the connection"), "{e}");

    // A device account without access to the probe topic: refused subscription, said so.
    let out = hub.dynsec(&["createClient", "dev-1", "-p", "dev-pw-0123"]);
    assert!(!out.to_lowercase().contains("error"), "{out}");
    let e = round_trip(&hub.url(), Some(("dev-1", "dev-pw-0123")), t)
        .await
        .expect_err("no access");
    assert!(
        e.0.contains("georep/probe/#") || e.0.contains("no round trip"),
        "{e}"
    );

    hub.down();
    let e = round_trip(&hub.url(), Some((&user, &pw)), t)
        .await
        .expect_err("down");
    assert!(e.0.contains("cannot reach the hub"), "{e}");
    hub.up();
    round_trip(&hub.url(), Some((&user, &pw)), t)
        .await
        .expect("back");
}
