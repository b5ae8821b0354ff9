//! Thread-per-core: each worker thread runs its own single-threaded Tokio runtime with its
//! client sessions and its own connections to every backend node, so a request and its reply
//! never cross threads and no lock is shared by the sessions of different workers.

use std::io;
use std::sync::Mutex;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

pub struct Workers {
    handles: Vec<Handle>,
    /// Taken once, by `stop`.
    running: Mutex<Vec<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut handles = Vec::new();
        let mut running = Vec::new();
        for i in 0..count.max(1) {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            let thread = std::thread::Builder::new()
                .name(format!("ringproxy-worker-{i}"))
                .spawn(move || {
                    // Tasks spawned through the handle run while this thread is inside block_on.
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            running.push((stop, thread));
        }
        Ok(Workers {
            handles,
            running: Mutex::new(running),
        })
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn handle(&self, worker: usize) -> &Handle {
        &self.handles[worker % self.handles.len()]
    }

    /// Stops every worker; tasks still running on them are dropped.
    pub fn stop(&self) {
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|p| p.into_inner()));
        for (stop, thread) in running {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}
