//! `switchyard-echo`: serves `switchyard.echo.v1.Echo` in its configured phase.

use std::process::ExitCode;

use switchyard_app::{App, Grpc, Service};
use switchyard_echo::{EchoService, EchoSettings, GRPC_SERVICE};

const ECHO: Service<EchoSettings> = Service {
    name: switchyard_echo::SERVICE,
    binary: "switchyard-echo",
    about: "Echo: answers every request with its own text, the phase and the thread.",
    endpoints: |settings| switchyard_echo::endpoints(settings.executor.phase),
};

fn main() -> ExitCode {
    switchyard_app::main(ECHO, serve)
}

async fn serve(settings: EchoSettings, mut app: App) -> anyhow::Result<()> {
    // With `echo.rollout`, echo joins the fleet's rollout over AMQP.
    if settings.echo.rollout {
        app.connect(&settings).await?;
    }
    let (say, echo_blocking) = EchoService::bodies(settings.executor.phase, &settings.echo);
    let echo = EchoService::new(
        app.register(say)?,
        app.register(echo_blocking)?,
        settings.grpc.overload_wait(),
    );
    let server = echo.into_server(settings.grpc.max_message_bytes);
    let grpc = Grpc::serving(&[GRPC_SERVICE], move |routes| routes.add_service(server));
    app.serve_grpc(&settings.grpc, grpc).await
}
