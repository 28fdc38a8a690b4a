//! How a new event is named: client-go's `tools/record/util.GenerateEventName`.

use k8s_openapi::jiff::Timestamp;

/// `<object name>.<hex of the Unix nanoseconds>`, as client-go names events, or a random UUID
/// when that is not a valid DNS subdomain (an object named with `:` such as ClusterRole
/// `system:controller:foo`, upper case, or over 253 characters): the API server would refuse
/// that name with 422 and the event would be lost.
pub fn event_name(object_name: &str, at: Timestamp) -> String {
    let name = format!("{object_name}.{:x}", at.as_nanosecond());
    if crate::labels::check_dns1123_subdomain(&name).is_ok() {
        name
    } else {
        uuid::Uuid::new_v4().to_string()
    }
}
