//! SIGTERM and SIGINT: the signal to stop accepting, finish what is in
//! flight, flush and exit 0.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Resolves every clone's [`Shutdown::requested`] once a signal arrives.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Installs the handlers (must run inside the runtime).
    pub fn on_signals() -> std::io::Result<Shutdown> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
            let _ = tx.send(true);
            // Keep the sender alive: receivers treat a closed channel as a request too.
            std::future::pending::<()>().await;
        });
        Ok(Shutdown { rx })
    }

    /// Resolves when a shutdown was requested.
    pub async fn requested(mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}
