//! The standard `grpc.health.v1` service every daemon serves.

use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::{HealthReporter, health_reporter};

/// The `grpc.health.v1` service, reporting SERVING for the whole server
/// (service name `""`) and for `service_name`, the daemon's own service
/// (e.g. [`monitor_server::SERVICE_NAME`](crate::v1::monitor_server::SERVICE_NAME),
/// `"pgwarden.v1.Monitor"`).
///
/// Add the returned server to the router next to the daemon's service; keep
/// the reporter to report NOT_SERVING while the daemon cannot do its job
/// (`reporter.set_service_status(SERVICE_NAME, ServingStatus::NotServing)`).
pub async fn health_service(service_name: &str) -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, server) = health_reporter();
    reporter
        .set_service_status(service_name, ServingStatus::Serving)
        .await;
    (reporter, server)
}

/// Asks the daemon on `path` whether `service_name` is serving, within
/// `timeout`: `true` only for an answer of SERVING. A daemon that is not
/// there, does not answer in time, or answers anything else is `false`.
pub async fn is_serving(
    path: &std::path::Path,
    service_name: &str,
    timeout: std::time::Duration,
) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Answer;
    use tonic_health::pb::health_client::HealthClient;
    let ask = async {
        let channel = super::connect(path).await.ok()?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service_name.to_owned(),
            })
            .await
            .ok()?;
        Some(reply.into_inner().status == Answer::Serving as i32)
    };
    matches!(tokio::time::timeout(timeout, ask).await, Ok(Some(true)))
}
