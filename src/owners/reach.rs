//! Which of a channel's delivery rules can deliver an event, whatever the cluster holds now: the
//! gate [`super::OwnerState::resolve`] applies before it reads the state, and the words `explain`
//! says of each rule (including why one does not deliver), so the two never disagree.

use super::{CustomRule, FieldHolds, NodePods, Object, Rules};

/// A delivery rule of a channel (`deliver:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Owners,
    NodePods,
    Selector,
}

impl Rule {
    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Owners => "owners",
            Rule::NodePods => "nodePods",
            Rule::Selector => "namespaceSelector",
        }
    }
}

/// What one rule does with an event: whether it can deliver it, and in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub rule: Rule,
    pub delivers: bool,
    pub says: String,
}

/// How `owners` ties an object's kind to a namespace.
enum OwnerTie<'a> {
    Claim,
    AttachedClaim,
    Itself,
    Field(&'a CustomRule),
}

fn owner_tie<'a>(object: Object<'_>, custom: Option<&'a CustomRule>) -> Option<OwnerTie<'a>> {
    match (object.group, object.kind, custom) {
        ("", "PersistentVolume", _) => Some(OwnerTie::Claim),
        ("storage.k8s.io", "VolumeAttachment", _) => Some(OwnerTie::AttachedClaim),
        ("", "Namespace", _) => Some(OwnerTie::Itself),
        (_, _, Some(rule)) if rule.follows == FieldHolds::Namespace => Some(OwnerTie::Field(rule)),
        _ => None,
    }
}

/// Why `nodePods` does not take an event, if it does not.
enum NodeMiss {
    Type,
    Kind,
}

/// Which Node `nodePods` follows for an event: the object itself, or the one a field names.
fn node_tie<'a>(
    node_pods: &NodePods,
    object: Object<'_>,
    type_: &str,
    custom: Option<&'a CustomRule>,
) -> Result<Option<&'a CustomRule>, NodeMiss> {
    if !node_pods.types.iter().any(|t| t == type_) {
        return Err(NodeMiss::Type);
    }
    match (object.group, object.kind, custom) {
        ("", "Node", _) | ("storage.k8s.io", "CSINode", _) => Ok(None),
        (_, _, Some(rule)) if rule.follows == FieldHolds::Node => Ok(Some(rule)),
        _ => Err(NodeMiss::Kind),
    }
}

impl Rules {
    /// The enabled rules that can deliver an event of `type_` about `object` (`custom`: the
    /// admin's `ownerRules` entry for its kind): what [`super::OwnerState::resolve`] then resolves.
    pub fn gate(&self, object: Object<'_>, type_: &str, custom: Option<&CustomRule>) -> [bool; 3] {
        [
            self.owners && owner_tie(object, custom).is_some(),
            self.node_pods
                .as_ref()
                .is_some_and(|np| node_tie(np, object, type_, custom).is_ok()),
            self.namespace_selector.is_some(),
        ]
    }

    /// What each enabled rule does with an event of `type_` about `object`, in words (the
    /// same decision as [`Self::gate`]).
    pub fn reach(
        &self,
        object: Object<'_>,
        type_: &str,
        custom: Option<&CustomRule>,
    ) -> Vec<Reach> {
        let mut out = Vec::new();
        if self.owners {
            out.push(owners(object, custom));
        }
        if let Some(node_pods) = &self.node_pods {
            out.push(node_pods_reach(node_pods, object, type_, custom));
        }
        if let Some(selector) = &self.namespace_selector {
            out.push(Reach {
                rule: Rule::Selector,
                delivers: true,
                says: format!("copies in the namespaces labelled {selector}"),
            });
        }
        out
    }
}

fn owners(object: Object<'_>, custom: Option<&CustomRule>) -> Reach {
    let says = owner_tie(object, custom).map(|tie| match tie {
        OwnerTie::Claim => {
            "a copy in the namespace of the claim that holds it (spec.claimRef)".to_owned()
        }
        OwnerTie::AttachedClaim => {
            "a copy in the claim namespace of the volume it attaches".to_owned()
        }
        OwnerTie::Itself => format!("a copy in namespace {} itself", object.name),
        OwnerTie::Field(rule) => format!(
            "a copy in the namespace its {} names (ownerRules)",
            rule.field_path()
        ),
    });
    Reach {
        rule: Rule::Owners,
        delivers: says.is_some(),
        says: says.unwrap_or_else(|| {
            format!(
                "not delivered: no owner rule ties {} to a namespace (owners covers PersistentVolume, VolumeAttachment, Namespace and the ownerRules kinds that name a namespace)",
                object.kind
            )
        }),
    }
}

fn node_pods_reach(
    node_pods: &NodePods,
    object: Object<'_>,
    type_: &str,
    custom: Option<&CustomRule>,
) -> Reach {
    let (delivers, says) = match node_tie(node_pods, object, type_, custom) {
        Ok(via) => (
            true,
            format!(
                "copies in the namespaces of the pods on {} (at most {})",
                via.map_or_else(
                    || format!("Node {}", object.name),
                    |rule| format!("the Node its {} names (ownerRules)", rule.field_path())
                ),
                node_pods.max_namespaces
            ),
        ),
        Err(NodeMiss::Type) => (
            false,
            format!(
                "not delivered: the rule takes {} events, this one is {}",
                node_pods.types.join(" and "),
                if type_.is_empty() { "untyped" } else { type_ }
            ),
        ),
        Err(NodeMiss::Kind) => (
            false,
            format!(
                "not delivered: {} is not a Node, a CSINode or a kind an ownerRules entry ties to a Node",
                object.kind
            ),
        ),
    };
    Reach {
        rule: Rule::NodePods,
        delivers,
        says,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object<'a>(group: &'a str, kind: &'a str) -> Object<'a> {
        Object {
            group,
            kind,
            name: "x",
        }
    }

    #[test]
    fn each_rule_says_what_it_does_with_this_kind_and_type() {
        let rules = Rules {
            owners: true,
            node_pods: Some(NodePods::default()),
            namespace_selector: None,
        };
        let pv = rules.reach(object("", "PersistentVolume"), "Warning", None);
        assert!(pv[0].delivers);
        assert!(!pv[1].delivers, "{:?}", pv[1]);
        let sc = rules.reach(object("storage.k8s.io", "StorageClass"), "Warning", None);
        assert!(sc.iter().all(|r| !r.delivers), "{sc:?}");
        assert!(
            sc[0].says.contains("no owner rule ties StorageClass"),
            "{sc:?}"
        );
        let normal_node = rules.reach(object("", "Node"), "Normal", None);
        assert_eq!(
            normal_node[1].says,
            "not delivered: the rule takes Warning events, this one is Normal"
        );
        let warning_node = rules.reach(object("", "Node"), "Warning", None);
        assert!(warning_node[1].delivers);
    }
}
