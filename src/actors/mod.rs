//! Actors (actix), one per file, each with the messages it handles at the top of its file.
//!
//! - [`heartbeat_session::HeartbeatSession`]: one per datanode heartbeat stream.
//! - [`cluster_view::ClusterView`]: the global view of nodes, stats, liveness and the
//!   instruction mailbox.
//!
//! The actors run on their own actix `System` in a dedicated thread ([`ActorRuntime`]), with a
//! pool of arbiters (one thread each) that sessions are spread over, so that the gRPC server's
//! tokio runtime and the actors never block each other and tests need no actix runtime.

pub mod autoadmin;
pub mod cluster_view;
pub mod election;
pub mod heartbeat_session;
pub mod scheduler;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use actix::ArbiterHandle;

/// The actix system that hosts every actor, and its arbiters.
pub struct ActorRuntime {
    system: actix_rt::System,
    thread: Option<JoinHandle<()>>,
    /// Where singleton actors (ClusterView, Scheduler) run.
    singletons: ArbiterHandle,
    /// The ElectionActor's own thread: its lease keepalive must never queue behind heartbeat
    /// bookkeeping or scheduling.
    election: ArbiterHandle,
    /// The Autoadmin's own thread: planning thousands of nodes must not delay heartbeats.
    planning: ArbiterHandle,
    /// Where sessions run, round-robin.
    sessions: Vec<ArbiterHandle>,
    next_session: AtomicUsize,
}

impl ActorRuntime {
    /// Starts a system with one arbiter for singletons and `session_threads` for sessions.
    pub fn start(session_threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let session_threads = session_threads.max(1);
        let thread = std::thread::Builder::new()
            .name("metasrv-actors".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                let arbiters = system.block_on(async move {
                    let singletons = actix_rt::Arbiter::new().handle();
                    let election = actix_rt::Arbiter::new().handle();
                    let planning = actix_rt::Arbiter::new().handle();
                    let sessions: Vec<_> = (0..session_threads)
                        .map(|_| actix_rt::Arbiter::new().handle())
                        .collect();
                    (
                        actix_rt::System::current(),
                        singletons,
                        election,
                        planning,
                        sessions,
                    )
                });
                // The receiver only goes away if `start` already gave up.
                let _ = tx.send(arbiters);
                let _ = system.run();
            })?;
        let (system, singletons, election, planning, sessions) = rx
            .recv()
            .map_err(|_| std::io::Error::other("the actor system thread died while starting"))?;
        Ok(Self {
            system,
            thread: Some(thread),
            singletons,
            election,
            planning,
            sessions,
            next_session: AtomicUsize::new(0),
        })
    }

    pub fn singletons(&self) -> &ArbiterHandle {
        &self.singletons
    }

    pub fn election(&self) -> &ArbiterHandle {
        &self.election
    }

    pub fn planning(&self) -> &ArbiterHandle {
        &self.planning
    }

    /// The arbiter for the next session (round-robin).
    pub fn next_session_arbiter(&self) -> &ArbiterHandle {
        let i = self.next_session.fetch_add(1, Ordering::Relaxed);
        &self.sessions[i % self.sessions.len()]
    }
}

impl Drop for ActorRuntime {
    fn drop(&mut self) {
        self.system.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
