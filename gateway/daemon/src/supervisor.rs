//! The supervisor: every component runs as a task under one cancellation token. When one
//! fails, or a stop signal arrives, all are told to stop; those still running after the grace
//! period are named in the log.

use std::{collections::BTreeMap, future::Future, time::Duration};

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// What a component's task returns.
pub type ComponentResult = anyhow::Result<()>;

/// Why the supervisor stopped.
#[derive(Debug)]
pub enum Outcome {
    /// A stop was requested (signal or token) and every component stopped in time.
    Stopped,
    /// A stop was requested, but these components did not stop within the grace period.
    Stragglers(Vec<&'static str>),
    /// A component failed (or ended while it should have kept running).
    Failed { component: &'static str, error: anyhow::Error },
}

pub struct Supervisor {
    token: CancellationToken,
    tasks: JoinSet<ComponentResult>,
    names: BTreeMap<Id, &'static str>,
}

impl Supervisor {
    pub fn new(token: CancellationToken) -> Self {
        Self { token, tasks: JoinSet::new(), names: BTreeMap::new() }
    }

    /// The token every component watches.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Runs a component. It should return only when the token is cancelled; returning earlier,
    /// with or without an error, stops the daemon.
    pub fn spawn<F>(&mut self, name: &'static str, fut: F)
    where
        F: Future<Output = ComponentResult> + Send + 'static,
    {
        let handle = self.tasks.spawn(fut);
        self.names.insert(handle.id(), name);
    }

    /// Waits until a component fails or ends, or until `stop` resolves; then cancels every
    /// component and waits up to `grace` for them.
    pub async fn run(mut self, stop: impl Future<Output = ()>, grace: Duration) -> Outcome {
        let mut failure = None;
        tokio::select! {
            _ = stop => tracing::info!("stop requested; stopping components"),
            _ = self.token.cancelled() => tracing::info!("shutdown requested; stopping components"),
            Some(joined) = self.tasks.join_next_with_id() => {
                failure = Some(self.failure_of(joined));
            }
        }
        self.token.cancel();
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = self.tasks.join_next_with_id() => match joined {
                    None => break,
                    Some(joined) => {
                        let (name, result) = self.result_of(joined);
                        match result {
                            Ok(()) => tracing::debug!(component = name, "component stopped"),
                            Err(e) => tracing::warn!(component = name, cause = %format!("{e:#}"), "component stopped with an error"),
                        }
                    }
                },
                _ = &mut deadline => {
                    let stragglers: Vec<_> = self.names.values().copied().collect();
                    tracing::warn!(?stragglers, "components did not stop within {grace:?}");
                    self.tasks.abort_all();
                    if failure.is_none() {
                        return Outcome::Stragglers(stragglers);
                    }
                    break;
                }
            }
        }
        failure.unwrap_or(Outcome::Stopped)
    }

    fn result_of(
        &mut self,
        joined: Result<(Id, ComponentResult), tokio::task::JoinError>,
    ) -> (&'static str, ComponentResult) {
        match joined {
            Ok((id, result)) => (self.names.remove(&id).unwrap_or("?"), result),
            Err(e) => {
                let name = self.names.remove(&e.id()).unwrap_or("?");
                let err = if e.is_panic() {
                    anyhow::anyhow!("component panicked")
                } else {
                    anyhow::anyhow!("component was aborted")
                };
                (name, Err(err))
            }
        }
    }

    fn failure_of(
        &mut self,
        joined: Result<(Id, ComponentResult), tokio::task::JoinError>,
    ) -> Outcome {
        let (component, result) = self.result_of(joined);
        let error = match result {
            Ok(()) => anyhow::anyhow!("component {component} ended unexpectedly"),
            Err(e) => e,
        };
        tracing::error!(component, cause = %format!("{error:#}"), "component failed; stopping the gateway");
        Outcome::Failed { component, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until_cancelled(token: CancellationToken) -> ComponentResult {
        token.cancelled().await;
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn one_failure_stops_everyone_and_names_the_cause() {
        let mut sup = Supervisor::new(CancellationToken::new());
        let t = sup.token().clone();
        sup.spawn("web", until_cancelled(t.clone()));
        sup.spawn("store", async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err(anyhow::anyhow!("disk on fire"))
        });
        let outcome = sup.run(std::future::pending(), Duration::from_secs(5)).await;
        match outcome {
            Outcome::Failed { component, error } => {
                assert_eq!(component, "store");
                assert_eq!(error.to_string(), "disk on fire");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(t.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn stop_request_waits_for_components_then_reports_clean_stop() {
        let mut sup = Supervisor::new(CancellationToken::new());
        let t = sup.token().clone();
        sup.spawn("a", until_cancelled(t.clone()));
        sup.spawn("b", until_cancelled(t.clone()));
        let outcome =
            sup.run(tokio::time::sleep(Duration::from_secs(2)), Duration::from_secs(5)).await;
        assert!(matches!(outcome, Outcome::Stopped), "{outcome:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn names_stragglers_after_the_grace_period() {
        let mut sup = Supervisor::new(CancellationToken::new());
        let t = sup.token().clone();
        sup.spawn("polite", until_cancelled(t.clone()));
        sup.spawn("stubborn", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        let started = tokio::time::Instant::now();
        let outcome = sup.run(std::future::ready(()), Duration::from_secs(2)).await;
        match outcome {
            Outcome::Stragglers(names) => assert_eq!(names, vec!["stubborn"]),
            other => panic!("unexpected {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_component_ending_early_is_a_failure() {
        let mut sup = Supervisor::new(CancellationToken::new());
        sup.spawn("quitter", async { Ok(()) });
        let outcome = sup.run(std::future::pending(), Duration::from_secs(1)).await;
        assert!(matches!(outcome, Outcome::Failed { component: "quitter", .. }), "{outcome:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_is_a_failure_not_a_crash() {
        let mut sup = Supervisor::new(CancellationToken::new());
        sup.spawn("buggy", async { panic!("boom") });
        let outcome = sup.run(std::future::pending(), Duration::from_secs(1)).await;
        match outcome {
            Outcome::Failed { component, error } => {
                assert_eq!(component, "buggy");
                assert!(error.to_string().contains("panicked"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
