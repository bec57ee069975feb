//! The registry's outbox events. Their payload is the contract's `Person` message, so this is
//! the one module besides `grpc` that builds protobuf types: the event is part of the contract.

use concord_platform::outbox::NewEvent;
use prost::Message;

use crate::domain::Person;
use crate::grpc::convert;

/// Type URL of event payloads about people.
pub const PERSON_TYPE_URL: &str = "type.googleapis.com/concord.registry.v1.Person";

/// An event about a person, tagged with what decides who sees it (its nationalities, its
/// facility, its category per nationality).
pub fn person(event_type: &'static str, p: &Person) -> NewEvent {
    NewEvent {
        event_type,
        resource_name: p.name(),
        scope_tags: Some(p.with_subject(concord_platform::auth::subject_tags)),
        payload: prost_types::Any {
            type_url: PERSON_TYPE_URL.into(),
            value: convert::person_out(p).encode_to_vec(),
        },
    }
}
