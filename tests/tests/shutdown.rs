//! Shutdown and restart: SIGTERM drains in-flight work and exits 0, the PostgreSQL server
//! keeps running, and a new agent on the same directories adopts it with the data intact.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use guest_agent_e2e::services::postgres::{database_names, is_alive, login, postmaster_pid};
use guest_agent_e2e::{APP_DB, APP_PASSWORD, APP_USER, TestEnv, prepare_args};
use serde_json::{Value, json};

#[tokio::test]
async fn sigterm_exits_zero_and_postgres_keeps_running() {
    let env = TestEnv::new();
    let (mut agent, c) = env.prepared_agent().await;
    let pid = postmaster_pid(&env.data_dir).expect("postmaster.pid names a live server");

    let status = agent.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; log:\n{}",
        agent.stderr()
    );
    assert!(
        c.try_get("/healthz").await.is_err(),
        "the agent still answers after exiting"
    );
    assert!(is_alive(pid), "PostgreSQL stopped with the agent");
    login(env.pg_port, APP_USER, APP_PASSWORD, APP_DB).await;
}

#[tokio::test]
async fn restarted_agent_adopts_the_running_server() {
    let env = TestEnv::new();
    let (mut agent, c) = env.prepared_agent().await;
    c.call(
        "create_database",
        json!({"databases": [{"_name": "kept_db"}]}),
    )
    .await;
    let app = login(env.pg_port, APP_USER, APP_PASSWORD, APP_DB).await;
    app.batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before restart')")
        .await
        .unwrap();
    drop(app);
    let pid = postmaster_pid(&env.data_dir).expect("a live postmaster");
    assert_eq!(
        agent.terminate().await.code(),
        Some(0),
        "log:\n{}",
        agent.stderr()
    );
    drop(agent);

    let _agent = env.start_agent().await;
    c.wait_status("healthy").await;
    assert_eq!(c.get("/readyz").await.status, 200);
    assert_eq!(
        postmaster_pid(&env.data_dir),
        Some(pid),
        "the new agent started a second server instead of adopting the running one"
    );
    let status = c.call("get_status", json!({})).await;
    assert_eq!(status["prepare"]["phase"], "prepared", "{status}");

    // The data and the objects are intact and the agent manages them.
    let app = login(env.pg_port, APP_USER, APP_PASSWORD, APP_DB).await;
    let v: String = app
        .query_one("SELECT v FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "before restart");
    drop(app);
    let listed = c.call("list_databases", json!({})).await;
    assert!(
        listed[0]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["_name"] == "kept_db"),
        "{listed}"
    );
    c.call(
        "create_database",
        json!({"databases": [{"_name": "after_restart"}]}),
    )
    .await;
    assert!(
        database_names(&env.root_login("postgres").await)
            .await
            .contains(&"after_restart".into())
    );

    // The adopted server is really under control: stop_db stops that very process.
    c.call("stop_db", json!({})).await;
    c.wait_status("shutdown").await;
    assert!(
        !is_alive(pid),
        "stop_db left the adopted postmaster {pid} running"
    );
}

#[tokio::test]
async fn sigterm_during_prepare_lets_it_finish() {
    let env = TestEnv::new();
    let mut agent = env.start_agent().await;
    let c = env.client();
    let started = c.call("prepare", prepare_args()).await;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = agent
        .wait_exit(Duration::from_secs(env.grace_secs) + Duration::from_secs(60))
        .await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; log:\n{}",
        agent.stderr()
    );
    let first_log = agent.stderr();
    drop(agent);

    // The prepare was completed (not abandoned half-way): a new agent finds it done.
    let _agent = env.start_agent().await;
    let st = c.call("get_status", json!({})).await;
    assert_eq!(
        st["prepare"]["phase"], "prepared",
        "prepare {} did not complete before exit: {st}\nfirst agent's log:\n{first_log}",
        started["operation"]["id"]
    );
    c.wait_status("healthy").await;
    login(env.pg_port, APP_USER, APP_PASSWORD, APP_DB).await;
    let root = env.root_login("postgres").await;
    assert!(database_names(&root).await.contains(&APP_DB.to_owned()));
}

#[tokio::test]
async fn sigterm_during_a_request_answers_it_and_applies_all_or_nothing() {
    const N: usize = 20;
    let env = TestEnv::new();
    let (mut agent, c) = env.prepared_agent().await;
    let names: Vec<String> = (0..N).map(|i| format!("slow_{i:02}")).collect();
    let dbs: Vec<Value> = names.iter().map(|n| json!({"_name": n})).collect();

    let caller = c.clone();
    let request = tokio::spawn(async move {
        caller
            .try_rpc("create_database", &json!({"databases": dbs}))
            .await
    });
    // Signal once the batch is visibly under way (the first database exists), or at once if
    // it is already over.
    let root = env.root_login("postgres").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !request.is_finished()
        && !database_names(&root).await.contains(&names[0])
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    agent.signal(nix::sys::signal::Signal::SIGTERM);

    let reply = request.await.unwrap();
    // No second SIGTERM: a second signal may legitimately force an abort.
    let status = agent
        .wait_exit(Duration::from_secs(env.grace_secs) + Duration::from_secs(60))
        .await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; log:\n{}",
        agent.stderr()
    );
    let present: Vec<String> = database_names(&root)
        .await
        .into_iter()
        .filter(|d| d.starts_with("slow_"))
        .collect();
    match reply {
        Ok(r) if r.status == 200 => {
            assert_eq!(
                present, names,
                "the request succeeded but not every database exists"
            );
        }
        Ok(r) => {
            assert!(
                present.is_empty(),
                "refused ({} {}) yet applied: {present:?}",
                r.status,
                r.body
            );
        }
        Err(e) => panic!(
            "the in-flight request got no reply ({e:?}); databases present: {present:?}; log:\n{}",
            agent.stderr()
        ),
    }
}
