//! A simulated fleet for benchmarks and trials (`bench/concierge.sh`), built on the
//! reference client:
//!
//! - `fleet-json N` prints an identities file of N devices (`dev-00000`…), their keys
//!   derived from their number, all with role `sensor`;
//! - `run URL CONCIERGE PUBLIC_KEY N` starts N devices and prints a line per event:
//!   `UNIX_MS DEVICE connected|disconnected HUB`;
//! - `assign URL N CONNS SECS [PATH]` asks URL for assignments of random devices of N
//!   (or GETs PATH, unauthenticated, for a bare-HTTP baseline) on CONNS connections for
//!   SECS seconds and prints requests/s and latency percentiles as JSON;
//! - `login MQTT_URL ID` waits until device ID (key from its number) can log in to the
//!   hub, trying every 10 ms; prints the milliseconds it took.

use std::time::{Duration, Instant};

use base64::Engine as _;

fn key_of(i: usize) -> Vec<u8> {
    format!("bench-device-key-{i:06}-0123456789").into_bytes()
}

fn id_of(i: usize) -> String {
    format!("dev-{i:05}")
}

fn number_of(id: &str) -> usize {
    id.trim_start_matches("dev-").parse().unwrap_or(0)
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

fn arg(args: &[String], i: usize, what: &str) -> String {
    args.get(i).cloned().unwrap_or_else(|| {
        eprintln!("missing {what}; see the comment at the top of examples/fleet.rs");
        std::process::exit(2)
    })
}

fn num(args: &[String], i: usize, what: &str) -> usize {
    arg(args, i, what).parse().unwrap_or_else(|_| {
        eprintln!("{what} must be a number");
        std::process::exit(2)
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fleet-json") => fleet_json(num(&args, 1, "N")),
        Some("run") => run(&args).await,
        Some("assign") => assign(&args).await,
        Some("login") => login(&args).await,
        _ => {
            eprintln!("usage: fleet fleet-json N | run URL CONCIERGE PUBLIC_KEY N | assign URL N CONNS SECS [PATH] | login MQTT_URL ID");
            std::process::exit(2)
        }
    }
}

fn fleet_json(n: usize) {
    let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
    let devices: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"id": id_of(i), "key": b64(&key_of(i)), "group": format!("g{}", i % 10), "roles": ["sensor"]}))
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "roles": [{"name": "sensor", "acls": [{"type": "publishClientSend", "topic": "telemetry/#"}]}],
            "devices": devices
        })
    );
}

async fn run(args: &[String]) {
    let url = arg(args, 1, "URL");
    let concierge = arg(args, 2, "CONCIERGE");
    let public = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(arg(args, 3, "PUBLIC_KEY"))
        .unwrap_or_default();
    let n = num(args, 4, "N");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut handles = Vec::new();
    for i in 0..n {
        let cfg = georep_device::Config::new(&url, &concierge, &id_of(i), &key_of(i), &public);
        let (h, mut events) = georep_device::spawn(cfg);
        handles.push(h);
        let tx = tx.clone();
        let id = id_of(i);
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                let line = match e {
                    georep_device::Event::Connected { hub } => {
                        format!("{} {id} connected {hub}", now_ms())
                    }
                    georep_device::Event::Disconnected { hub, .. } => {
                        format!("{} {id} disconnected {hub}", now_ms())
                    }
                    _ => continue,
                };
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    while let Some(line) = rx.recv().await {
        println!("{line}");
    }
}

async fn assign(args: &[String]) {
    let url = arg(args, 1, "URL");
    let n = num(args, 2, "N").max(1);
    let conns = num(args, 3, "CONNS").max(1);
    let secs = num(args, 4, "SECS") as u64;
    let path = args.get(5).cloned();
    let host = url.split("://").nth(1).unwrap_or_default().to_string();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (url, host, path) = (url.clone(), host.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap_or_default();
            let mut lat = Vec::new();
            let mut failed = 0u64;
            while Instant::now() < until {
                let i = rand::random_range(0..n);
                let started = Instant::now();
                let r = match &path {
                    Some(p) => http.get(format!("{url}{p}")).send().await,
                    None => {
                        let exp = (now_ms() / 1000) as u64 + 3600;
                        let token = georep_device::sas::token(
                            &format!("{host}/devices/{}", id_of(i)),
                            &key_of(i),
                            exp,
                        );
                        http.get(format!("{url}/v1/devices/{}/assignment", id_of(i)))
                            .header("authorization", token)
                            .send()
                            .await
                    }
                };
                match r {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(started.elapsed());
                    }
                    _ => failed += 1,
                }
            }
            (lat, failed)
        }));
    }
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        if let Ok((l, f)) = t.await {
            all.extend(l);
            failed += f;
        }
    }
    all.sort();
    let p = |q: f64| {
        all.get(((q * all.len() as f64).ceil() as usize).saturating_sub(1))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": all.len(), "failed": failed,
            "per_sec": all.len() as f64 / secs.max(1) as f64,
            "p50_ms": p(0.50), "p99_ms": p(0.99),
        })
    );
}

async fn login(args: &[String]) {
    let url = arg(args, 1, "MQTT_URL");
    let id = arg(args, 2, "ID");
    let key = key_of(number_of(&id));
    let rest = url.trim_start_matches("mqtt://");
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
    let port: u16 = port.parse().unwrap_or(1883);
    let started = Instant::now();
    loop {
        let mut opts = rumqttc::MqttOptions::new(format!("{id}-login"), host, port);
        opts.set_credentials(id.clone(), georep_device::claims::mqtt_password(&key));
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 4);
        let ok = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        let _ = client.try_disconnect();
        if ok {
            println!("{}", started.elapsed().as_millis());
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            eprintln!("{id} could not log in to {url} within 60 s");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
