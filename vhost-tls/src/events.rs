//! Events waiting for the driver's event buffers (spec 2.7). A driver that
//! posts none must not make the device hold more than a bounded number: at
//! most one SOCKET_ERROR and one CONNECT_DONE per socket (a newer
//! CONNECT_DONE replaces an older one the driver has not seen), and an
//! ACCEPT_READY per handshaken connection waiting for ACCEPT. So the queue
//! never holds more than about three events per open socket, and a
//! socket's events go when the driver closes it.

use std::collections::{HashMap, VecDeque};

use virtio_tls_spec::{self as wire, Event};

#[derive(Debug, Default)]
pub struct EventQueue {
    events: VecDeque<Event>,
    /// Events in `events` by socket and kind.
    pending: HashMap<(u32, u16), usize>,
}

impl EventQueue {
    /// Queues `event`, unless the driver will learn the same from one
    /// already waiting (SOCKET_ERROR: the first error stands), or
    /// replaces that one (CONNECT_DONE: the latest connect's outcome).
    /// ACCEPT_READY is queued while fewer wait for its socket than
    /// `accept_ready_room` (the connections waiting for ACCEPT).
    pub fn push(&mut self, event: Event, accept_ready_room: usize) {
        let key = (event.socket_id, event.event);
        let waiting = self.pending.get(&key).copied().unwrap_or(0);
        match event.event {
            wire::VIRTIO_TLS_EVENT_CONNECT_DONE if waiting > 0 => {
                if let Some(older) = self.events.iter_mut().find(|e| (e.socket_id, e.event) == key) {
                    *older = event;
                }
                return;
            }
            wire::VIRTIO_TLS_EVENT_ACCEPT_READY if waiting >= accept_ready_room => return,
            wire::VIRTIO_TLS_EVENT_SOCKET_ERROR if waiting > 0 => return,
            _ => {}
        }
        *self.pending.entry(key).or_default() += 1;
        self.events.push_back(event);
    }

    pub fn front(&self) -> Option<&Event> {
        self.events.front()
    }

    /// The oldest event went to the driver.
    pub fn pop_front(&mut self) -> Option<Event> {
        let event = self.events.pop_front()?;
        let key = (event.socket_id, event.event);
        if let Some(waiting) = self.pending.get_mut(&key) {
            *waiting -= 1;
            if *waiting == 0 {
                self.pending.remove(&key);
            }
        }
        Some(event)
    }

    /// The driver closed `socket_id`: it wants nothing more about it.
    pub fn forget(&mut self, socket_id: u32) {
        if self.pending.keys().any(|&(id, _)| id == socket_id) {
            self.events.retain(|event| event.socket_id != socket_id);
            self.pending.retain(|&(id, _), _| id != socket_id);
        }
    }

    pub fn clear(&mut self) {
        self.events.clear();
        self.pending.clear();
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, socket_id: u32, request_id: u64) -> Event {
        Event { event: kind, socket_id, request_id, ..Default::default() }
    }

    #[test]
    fn one_error_and_the_latest_connect_per_socket() {
        let mut queue = EventQueue::default();
        for _ in 0..1000 {
            queue.push(event(wire::VIRTIO_TLS_EVENT_SOCKET_ERROR, 1, 0), 0);
        }
        queue.push(event(wire::VIRTIO_TLS_EVENT_CONNECT_DONE, 2, 7), 0);
        queue.push(event(wire::VIRTIO_TLS_EVENT_CONNECT_DONE, 2, 8), 0);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.pop_front().unwrap().socket_id, 1);
        assert_eq!(queue.pop_front().unwrap().request_id, 8, "the newer outcome replaced the older");
        // Delivered: the next error is news again.
        queue.push(event(wire::VIRTIO_TLS_EVENT_SOCKET_ERROR, 1, 0), 0);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn accept_ready_up_to_the_connections_waiting() {
        let mut queue = EventQueue::default();
        for ready in 1..=3 {
            queue.push(event(wire::VIRTIO_TLS_EVENT_ACCEPT_READY, 5, 0), ready);
        }
        queue.push(event(wire::VIRTIO_TLS_EVENT_ACCEPT_READY, 5, 0), 3);
        assert_eq!(queue.len(), 3);
        queue.push(event(wire::VIRTIO_TLS_EVENT_SOCKET_ERROR, 6, 0), 0);
        queue.forget(5);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.front().unwrap().socket_id, 6);
    }
}
