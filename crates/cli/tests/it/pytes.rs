//! End to end with the stock `py-tes` client from PyPI (installed by scripts/test.sh).

use std::process::Command;

use crate::support::*;

/// The Python with py-tes installed; scripts/test.sh sets it up and exports the variable.
fn python() -> String {
    std::env::var("TRESOR_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TRESOR_TEST_PYTHON is not set: run the tests through scripts/test.sh, which creates the py-tes venv")
    })
}

#[tokio::test]
async fn py_tes_drives_the_whole_api() {
    let server = TestServer::start().await;
    // The input is there before the workspace's first task (py-tes counts its tasks, so none
    // runs to make the directory): an operator makes the directory, and an administrator
    // assigns it, which has tresor adopt it.
    std::fs::create_dir(&server.storage).unwrap();
    std::fs::write(server.storage.join("input.txt"), "hello from storage\n").unwrap();
    let personal = server.admin.me().await.unwrap().personal_workspace;
    server
        .admin
        .set_file_storage(&personal, Some(&server.storage.display().to_string()))
        .await
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/pytes_e2e.py");
    let server_url = server.url.clone();
    let storage = server.storage.display().to_string();
    let token = server.admin_token.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(server_url)
            .arg(storage)
            .env("TRESOR_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "py-tes run failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("py-tes e2e: all checks passed"), "{stdout}");
}
