//! The event subscription a plugin returns from Configure, and the events
//! that only notify.
//!
//! NRI encodes a subscription as an `int32` in which event `e` (the
//! `api::Event` enum value) owns bit `e - 1`: RunPodSandbox is `0x1`,
//! CreateContainer `0x8`, and so on. A runtime treats `0` as "every event", and
//! rejects the plugin when a bit beyond its own `Event::LAST` is set, which
//! matters because runtimes vendoring NRI before v0.10 (containerd 1.7 up to
//! 2.1) know only events 1..=11.

use std::fmt;

use crate::api::Event;

/// A set of [`Event`]s, as NRI puts it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EventMask(i32);

/// Every event along with the name NRI gives it, in enum order.
const NAMED_EVENTS: [(Event, &str); 14] = [
    (Event::RUN_POD_SANDBOX, "RunPodSandbox"),
    (Event::STOP_POD_SANDBOX, "StopPodSandbox"),
    (Event::REMOVE_POD_SANDBOX, "RemovePodSandbox"),
    (Event::CREATE_CONTAINER, "CreateContainer"),
    (Event::POST_CREATE_CONTAINER, "PostCreateContainer"),
    (Event::START_CONTAINER, "StartContainer"),
    (Event::POST_START_CONTAINER, "PostStartContainer"),
    (Event::UPDATE_CONTAINER, "UpdateContainer"),
    (Event::POST_UPDATE_CONTAINER, "PostUpdateContainer"),
    (Event::STOP_CONTAINER, "StopContainer"),
    (Event::REMOVE_CONTAINER, "RemoveContainer"),
    (Event::UPDATE_POD_SANDBOX, "UpdatePodSandbox"),
    (Event::POST_UPDATE_POD_SANDBOX, "PostUpdatePodSandbox"),
    (Event::VALIDATE_CONTAINER_ADJUSTMENT, "ValidateContainerAdjustment"),
];

impl EventMask {
    /// No events. Never sent as is: on the wire it would mean "all events".
    pub const EMPTY: EventMask = EventMask(0);

    /// Events every runtime with NRI v0.6 or later understands
    /// (RunPodSandbox through RemoveContainer).
    pub const PORTABLE: EventMask = EventMask((1 << (Event::REMOVE_CONTAINER as i32)) - 1);

    /// The mask holding exactly `events`.
    pub const fn of(events: &[Event]) -> EventMask {
        let mut mask = EventMask::EMPTY;
        let mut i = 0;
        while i < events.len() {
            mask = mask.with(events[i]);
            i += 1;
        }
        mask
    }

    /// This mask plus `event`. `UNKNOWN` and `LAST` are markers, not events,
    /// and are ignored.
    pub const fn with(self, event: Event) -> EventMask {
        match Self::bit(event) {
            Some(bit) => EventMask(self.0 | bit),
            None => self,
        }
    }

    /// Whether `event` is in the mask.
    pub const fn contains(self, event: Event) -> bool {
        match Self::bit(event) {
            Some(bit) => self.0 & bit != 0,
            None => false,
        }
    }

    /// The mask as `ConfigureResponse.events` carries it.
    pub const fn bits(self) -> i32 {
        self.0
    }

    /// A mask received on the wire.
    pub const fn from_bits(bits: i32) -> EventMask {
        EventMask(bits)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    const fn bit(event: Event) -> Option<i32> {
        let value = event as i32;
        if value <= Event::UNKNOWN as i32 || value >= Event::LAST as i32 {
            None
        } else {
            Some(1 << (value - 1))
        }
    }
}

/// The events that cannot change anything: the runtime only tells the
/// plugin about them (NRI before v0.10 sends all of them as StateChange).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Notification {
    RunPodSandbox,
    StopPodSandbox,
    RemovePodSandbox,
    UpdatePodSandbox,
    PostUpdatePodSandbox,
    PostCreateContainer,
    StartContainer,
    PostStartContainer,
    PostUpdateContainer,
    RemoveContainer,
}

impl Notification {
    pub const ALL: [Notification; 10] = [
        Notification::RunPodSandbox,
        Notification::StopPodSandbox,
        Notification::RemovePodSandbox,
        Notification::UpdatePodSandbox,
        Notification::PostUpdatePodSandbox,
        Notification::PostCreateContainer,
        Notification::StartContainer,
        Notification::PostStartContainer,
        Notification::PostUpdateContainer,
        Notification::RemoveContainer,
    ];

    /// The wire event.
    pub const fn event(self) -> Event {
        match self {
            Notification::RunPodSandbox => Event::RUN_POD_SANDBOX,
            Notification::StopPodSandbox => Event::STOP_POD_SANDBOX,
            Notification::RemovePodSandbox => Event::REMOVE_POD_SANDBOX,
            Notification::UpdatePodSandbox => Event::UPDATE_POD_SANDBOX,
            Notification::PostUpdatePodSandbox => Event::POST_UPDATE_POD_SANDBOX,
            Notification::PostCreateContainer => Event::POST_CREATE_CONTAINER,
            Notification::StartContainer => Event::START_CONTAINER,
            Notification::PostStartContainer => Event::POST_START_CONTAINER,
            Notification::PostUpdateContainer => Event::POST_UPDATE_CONTAINER,
            Notification::RemoveContainer => Event::REMOVE_CONTAINER,
        }
    }

    /// `None` for events that are requests (CreateContainer, ...) or markers.
    pub fn of(event: Event) -> Option<Notification> {
        Notification::ALL.into_iter().find(|n| n.event() == event)
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(event_name(self.event()))
    }
}

/// NRI's name of an event ("CreateContainer"); "unknown" for markers.
pub fn event_name(event: Event) -> &'static str {
    NAMED_EVENTS.iter().find(|(e, _)| *e == event).map_or("unknown", |(_, name)| name)
}

impl From<Event> for EventMask {
    fn from(event: Event) -> Self {
        EventMask::EMPTY.with(event)
    }
}

/// Lists event names as NRI's logs do ("CreateContainer,StopContainer"), so
/// our logs and containerd's can be compared.
impl fmt::Display for EventMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        let mut sep = "";
        for (event, name) in NAMED_EVENTS {
            if self.contains(event) {
                write!(f, "{sep}{name}")?;
                sep = ",";
                rest &= !EventMask::from(event).0;
            }
        }
        if rest != 0 {
            write!(f, "{sep}unknown(0x{rest:x})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_e_owns_bit_e_minus_one() {
        assert_eq!(EventMask::from(Event::RUN_POD_SANDBOX).bits(), 0x1);
        assert_eq!(EventMask::from(Event::CREATE_CONTAINER).bits(), 0x8);
        assert_eq!(EventMask::from(Event::REMOVE_CONTAINER).bits(), 0x400);
        assert_eq!(EventMask::from(Event::VALIDATE_CONTAINER_ADJUSTMENT).bits(), 0x2000);
    }

    #[test]
    fn portable_mask_is_what_nri_v0_8_accepts() {
        // NRI v0.8 (containerd 2.1): ValidEvents = (1 << (LAST(12) - 1)) - 1.
        assert_eq!(EventMask::PORTABLE.bits(), 0x7ff);
    }

    #[test]
    fn markers_are_not_events() {
        assert!(EventMask::of(&[Event::UNKNOWN, Event::LAST]).is_empty());
        assert!(!EventMask::from_bits(-1).contains(Event::UNKNOWN));
    }

    #[test]
    fn of_and_contains_agree() {
        let mask = EventMask::of(&[Event::CREATE_CONTAINER, Event::STOP_CONTAINER]);
        assert!(mask.contains(Event::CREATE_CONTAINER));
        assert!(mask.contains(Event::STOP_CONTAINER));
        assert!(!mask.contains(Event::UPDATE_CONTAINER));
        assert_eq!(mask.to_string(), "CreateContainer,StopContainer");
        assert_eq!(EventMask::from_bits(0x8 | 0x4000).to_string(), "CreateContainer,unknown(0x4000)");
    }

    #[test]
    fn notifications_are_the_events_that_are_not_requests() {
        for n in Notification::ALL {
            assert_eq!(Notification::of(n.event()), Some(n));
        }
        for request in [Event::CREATE_CONTAINER, Event::UPDATE_CONTAINER, Event::STOP_CONTAINER] {
            assert_eq!(Notification::of(request), None);
        }
        assert_eq!(Notification::of(Event::VALIDATE_CONTAINER_ADJUSTMENT), None);
        assert_eq!(Notification::StartContainer.to_string(), "StartContainer");
    }
}
