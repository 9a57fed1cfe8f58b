//! Private IPs as exclusive slots (no client). AWS carries at most one Elastic IP per private
//! IP: associating a second one there silently disassociates the first. So across all
//! managed addresses one private IP carries at most one of them: each address holds one slot
//! on its holder's interface, recorded on its holder Lease (`feip.io/private-ip`) so that it
//! survives restarts and leader changes.
//!
//! Which slot an address takes on a node, in order: the candidate's explicit
//! `privateIpAddress`; the slot its Lease (or this process) recorded on that node; the private
//! IP it is associated with there now (adoption); the interface's primary private IP; its
//! secondary private IPs in address order. A slot is taken when another address claims it
//! (its recorded slot) or EC2 shows another address associated there. A node without a free
//! slot cannot take the address.
//!
//! Slots are keyed by private IP alone: private IPv4 addresses are unique within a VPC, and
//! one address's candidates share its VPC (the network guard). Two VPCs with overlapping
//! ranges in one cluster can make an IP look taken that is not; never the reverse.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::coordination::v1::Lease;

use crate::aws::{AddressSnapshot, InterfaceInfo};
use crate::decide::Target;

/// Lease annotation: the private IP the holder's slot is (the address's target there).
pub(super) const PRIVATE_IP_ANNOTATION: &str = "feip.io/private-ip";
/// Lease annotation: the interface that private IP is on.
pub(super) const INTERFACE_ANNOTATION: &str = "feip.io/network-interface";

/// One address's slot: the node that holds it and the private IP (and interface) there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SlotRecord {
    pub(super) node: String,
    pub(super) network_interface_id: Option<String>,
    pub(super) private_ip: String,
}

impl SlotRecord {
    /// The slot a holder's target is.
    pub(super) fn of(node: &str, target: &Target) -> Self {
        SlotRecord {
            node: node.to_owned(),
            network_interface_id: Some(target.network_interface_id.clone()),
            private_ip: target.private_ip.clone(),
        }
    }

    /// The slot a holder Lease records (none without a holder or without the annotation,
    /// as Leases written before slots existed).
    pub(super) fn from_lease(lease: &Lease) -> Option<Self> {
        let node = lease
            .spec
            .as_ref()?
            .holder_identity
            .clone()
            .filter(|h| !h.is_empty())?;
        let a = lease.metadata.annotations.as_ref()?;
        Some(SlotRecord {
            node,
            network_interface_id: a.get(INTERFACE_ANNOTATION).cloned(),
            private_ip: a.get(PRIVATE_IP_ANNOTATION)?.clone(),
        })
    }

    /// Is this the slot `target` is on?
    pub(super) fn is(&self, node: &str, target: &Target) -> bool {
        self.node == node
            && self.private_ip == target.private_ip
            && self
                .network_interface_id
                .as_deref()
                .is_none_or(|eni| eni == target.network_interface_id)
    }
}

/// The slots this process recorded last, per address key: `Some(slot)`, or `None` for "holds
/// no slot" (no holder, or a holder without a free slot). They are newer than the Lease cache
/// (which lags this process's own writes); a new leader starts with none and reads the
/// Leases. Kept under one lock with the decision that uses them, so that two addresses
/// deciding at once never take the same slot.
#[derive(Default)]
pub(super) struct SlotClaims {
    claims: HashMap<String, Option<SlotRecord>>,
}

impl SlotClaims {
    /// The slot of `key`: as this process recorded it, else as `lease` (its Lease) says.
    pub(super) fn slot_of(
        &self,
        key: &str,
        lease: impl FnOnce() -> Option<SlotRecord>,
    ) -> Option<SlotRecord> {
        match self.claims.get(key) {
            Some(recorded) => recorded.clone(),
            None => lease(),
        }
    }

    /// Records the slot of `key` (`None`: it holds none).
    pub(super) fn set(&mut self, key: &str, slot: Option<SlotRecord>) {
        self.claims.insert(key.to_owned(), slot);
    }

    /// Forgets `key` (the address is gone).
    pub(super) fn forget(&mut self, key: &str) {
        self.claims.remove(key);
    }

    /// Forgets every claim (a change of leadership: the Leases are the record again).
    pub(super) fn clear(&mut self) {
        self.claims.clear();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.claims.len()
    }
}

/// Who else occupies which private IP, as one address sees it: private IP -> a description of
/// the other address ("ns/name").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Occupancy {
    by_ip: BTreeMap<String, String>,
}

impl Occupancy {
    pub(super) fn holder_of(&self, ip: &str) -> Option<&str> {
        self.by_ip.get(ip).map(String::as_str)
    }

    #[cfg(test)]
    pub(super) fn with(mut self, ip: &str, who: &str) -> Self {
        self.by_ip.insert(ip.into(), who.into());
        self
    }
}

/// Another managed address as the occupancy reads it.
pub(super) struct OtherAddress<'a> {
    /// Its key ("ns/name").
    pub(super) key: &'a str,
    /// Its allocation id, when known.
    pub(super) allocation_id: Option<&'a str>,
    /// Its slot: as this process recorded it, else as its Lease does.
    pub(super) slot: Option<SlotRecord>,
}

/// The private IPs in `wanted` that other addresses occupy: by their recorded slots, and by
/// where EC2 last saw any address other than `my_allocation` (an address feip does not
/// manage counts too when the snapshot has it: associating over it would knock it off).
pub(super) fn occupancy<'a>(
    others: impl IntoIterator<Item = OtherAddress<'a>>,
    my_allocation: Option<&str>,
    addresses: &AddressSnapshot,
    wanted: &HashSet<String>,
) -> Occupancy {
    let mut by_ip = BTreeMap::new();
    let mut names: HashMap<&str, &str> = HashMap::new();
    for o in others {
        if let Some(a) = o.allocation_id {
            names.insert(a, o.key);
        }
        if let Some(s) = o.slot
            && wanted.contains(&s.private_ip)
        {
            by_ip
                .entry(s.private_ip)
                .or_insert_with(|| o.key.to_owned());
        }
    }
    for a in addresses.by_allocation.values() {
        if Some(a.allocation_id.as_str()) == my_allocation {
            continue;
        }
        if let Some(ip) = a.private_ip.as_ref().filter(|ip| wanted.contains(*ip)) {
            by_ip.entry(ip.clone()).or_insert_with(|| {
                names.get(a.allocation_id.as_str()).map_or_else(
                    || format!("Elastic IP {} ({})", a.public_ip, a.allocation_id),
                    |k| (*k).to_owned(),
                )
            });
        }
    }
    Occupancy { by_ip }
}

/// What one address knows of its own slot on a node.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct OwnSlot<'a> {
    /// The candidate's explicit `privateIpAddress`.
    pub(super) explicit: Option<&'a str>,
    /// The private IP recorded for this node (Lease or this process).
    pub(super) recorded: Option<&'a str>,
    /// The private IP of this interface the address is associated with now.
    pub(super) current: Option<&'a str>,
}

/// Why a node cannot take the address on `interface`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SlotError {
    /// The explicit private IP is not one of the interface's.
    NotOnInterface { ip: String, interface: String },
    /// Every usable private IP carries another address.
    NoFreeSlot {
        interface: String,
        /// (private IP, who holds it), in the order they were tried.
        taken: Vec<(String, String)>,
    },
}

impl std::fmt::Display for SlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotError::NotOnInterface { ip, interface } => {
                write!(f, "private IP {ip} is not on interface {interface}")
            }
            SlotError::NoFreeSlot { interface, taken } => {
                let held: Vec<String> = taken
                    .iter()
                    .map(|(ip, who)| format!("{ip} carries {who}"))
                    .collect();
                write!(
                    f,
                    "no free private IP on interface {interface}: {}",
                    held.join(", ")
                )
            }
        }
    }
}

/// The interface's private IPs: primary first, then the secondaries in address order (EC2's
/// answer order is not promised, the choice must be the same on every replica).
pub(super) fn private_ips(eni: &InterfaceInfo) -> Vec<String> {
    let mut secondaries: Vec<&String> = eni
        .private_ips
        .iter()
        .filter(|ip| **ip != eni.primary_private_ip)
        .collect();
    secondaries.sort_by_key(|ip| (ip.parse::<Ipv4Addr>().ok(), ip.as_str()));
    secondaries.dedup();
    std::iter::once(eni.primary_private_ip.clone())
        .chain(secondaries.into_iter().cloned())
        .collect()
}

/// The slot the address takes on `eni` (see the module comment for the order).
pub(super) fn pick(
    eni: &InterfaceInfo,
    own: OwnSlot<'_>,
    occupied: &Occupancy,
) -> Result<String, SlotError> {
    let ips = private_ips(eni);
    let interface = eni.network_interface_id.clone();
    if let Some(ip) = own.explicit {
        if !ips.iter().any(|i| i == ip) {
            return Err(SlotError::NotOnInterface {
                ip: ip.to_owned(),
                interface,
            });
        }
        return match occupied.holder_of(ip) {
            None => Ok(ip.to_owned()),
            Some(who) => Err(SlotError::NoFreeSlot {
                interface,
                taken: vec![(ip.to_owned(), who.to_owned())],
            }),
        };
    }
    let free = |ip: &str| ips.iter().any(|i| i == ip) && occupied.holder_of(ip).is_none();
    if let Some(ip) = [own.recorded, own.current]
        .into_iter()
        .flatten()
        .find(|ip| free(ip))
    {
        return Ok(ip.to_owned());
    }
    if let Some(ip) = ips.iter().find(|ip| free(ip)) {
        return Ok(ip.clone());
    }
    Err(SlotError::NoFreeSlot {
        interface,
        taken: ips
            .iter()
            .filter_map(|ip| occupied.holder_of(ip).map(|w| (ip.clone(), w.to_owned())))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::AddressInfo;

    fn eni(primary: &str, secondaries: &[&str]) -> InterfaceInfo {
        InterfaceInfo {
            network_interface_id: "eni-a".into(),
            device_index: 0,
            primary_private_ip: primary.into(),
            private_ips: std::iter::once(primary)
                .chain(secondaries.iter().copied())
                .map(str::to_string)
                .collect(),
        }
    }

    fn own<'a>(
        explicit: Option<&'a str>,
        recorded: Option<&'a str>,
        current: Option<&'a str>,
    ) -> OwnSlot<'a> {
        OwnSlot {
            explicit,
            recorded,
            current,
        }
    }

    #[test]
    fn picks_in_order_explicit_recorded_current_primary_then_secondaries() {
        let e = eni("10.0.0.20", &["10.0.0.100", "10.0.0.9", "10.0.0.21"]);
        let none = Occupancy::default();
        // (case, own slot, occupied, expected)
        let rows: Vec<(&str, OwnSlot<'_>, Occupancy, Result<&str, ()>)> = vec![
            (
                "primary when free",
                own(None, None, None),
                none.clone(),
                Ok("10.0.0.20"),
            ),
            (
                "the lowest free secondary when the primary is taken",
                own(None, None, None),
                none.clone().with("10.0.0.20", "a/one"),
                Ok("10.0.0.9"),
            ),
            (
                "secondaries in address order, not EC2's order",
                own(None, None, None),
                none.clone()
                    .with("10.0.0.20", "a/one")
                    .with("10.0.0.9", "a/two"),
                Ok("10.0.0.21"),
            ),
            (
                "the recorded slot is kept",
                own(None, Some("10.0.0.21"), None),
                none.clone(),
                Ok("10.0.0.21"),
            ),
            (
                "the current association is adopted",
                own(None, None, Some("10.0.0.100")),
                none.clone(),
                Ok("10.0.0.100"),
            ),
            (
                "recorded before current",
                own(None, Some("10.0.0.21"), Some("10.0.0.100")),
                none.clone(),
                Ok("10.0.0.21"),
            ),
            (
                "a recorded slot someone else took is given up",
                own(None, Some("10.0.0.21"), None),
                none.clone().with("10.0.0.21", "a/one"),
                Ok("10.0.0.20"),
            ),
            (
                "a recorded IP no longer on the interface is given up",
                own(None, Some("10.0.0.55"), None),
                none.clone(),
                Ok("10.0.0.20"),
            ),
            (
                "explicit wins over recorded",
                own(Some("10.0.0.9"), Some("10.0.0.21"), None),
                none.clone(),
                Ok("10.0.0.9"),
            ),
            (
                "explicit taken is no slot",
                own(Some("10.0.0.9"), None, None),
                none.clone().with("10.0.0.9", "b/x"),
                Err(()),
            ),
            (
                "explicit not on the interface",
                own(Some("10.0.0.77"), None, None),
                none.clone(),
                Err(()),
            ),
            (
                "every IP taken",
                own(None, Some("10.0.0.20"), None),
                none.clone()
                    .with("10.0.0.20", "a/1")
                    .with("10.0.0.9", "a/2")
                    .with("10.0.0.21", "a/3")
                    .with("10.0.0.100", "a/4"),
                Err(()),
            ),
        ];
        for (case, own, occupied, want) in rows {
            let got = pick(&e, own, &occupied);
            assert_eq!(got.as_deref().map_err(|_| ()), want, "{case}: {got:?}");
        }
    }

    #[test]
    fn errors_name_the_interface_and_who_holds_each_ip() {
        let e = eni("10.0.0.20", &["10.0.0.21"]);
        let occupied = Occupancy::default()
            .with("10.0.0.20", "a/one")
            .with("10.0.0.21", "b/two");
        let err = pick(&e, OwnSlot::default(), &occupied).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free private IP on interface eni-a: 10.0.0.20 carries a/one, 10.0.0.21 carries b/two"
        );
        let err = pick(&e, own(Some("10.0.0.21"), None, None), &occupied).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free private IP on interface eni-a: 10.0.0.21 carries b/two"
        );
        let err = pick(&e, own(Some("10.0.0.99"), None, None), &occupied).unwrap_err();
        assert_eq!(
            err.to_string(),
            "private IP 10.0.0.99 is not on interface eni-a"
        );
    }

    fn info(alloc: &str, public: &str, ip: Option<&str>) -> AddressInfo {
        AddressInfo {
            allocation_id: alloc.into(),
            public_ip: public.into(),
            association_id: ip.map(|_| format!("assoc-{alloc}")),
            network_interface_id: ip.map(|_| "eni-a".into()),
            private_ip: ip.map(str::to_string),
            instance_id: None,
            tags: Default::default(),
        }
    }

    fn slot(node: &str, ip: &str) -> Option<SlotRecord> {
        Some(SlotRecord {
            node: node.into(),
            network_interface_id: None,
            private_ip: ip.into(),
        })
    }

    #[test]
    fn occupancy_counts_recorded_slots_and_what_ec2_shows_except_my_own_address() {
        let mut snap = AddressSnapshot::default();
        snap.insert(info("eipalloc-me", "203.0.113.1", Some("10.0.0.20")));
        snap.insert(info("eipalloc-b", "203.0.113.2", Some("10.0.0.21")));
        snap.insert(info("eipalloc-unmanaged", "203.0.113.3", Some("10.0.0.22")));
        snap.insert(info("eipalloc-idle", "203.0.113.4", None));
        let wanted: HashSet<String> = ["10.0.0.20", "10.0.0.21", "10.0.0.22", "10.0.0.23"]
            .into_iter()
            .map(str::to_string)
            .collect();
        let others = vec![
            OtherAddress {
                key: "a/b",
                allocation_id: Some("eipalloc-b"),
                slot: slot("n1", "10.0.0.30"), // recorded elsewhere (moving), still in EC2 here
            },
            OtherAddress {
                key: "a/c",
                allocation_id: Some("eipalloc-c"),
                slot: slot("n1", "10.0.0.23"), // claimed, not associated yet
            },
        ];
        let o = occupancy(others, Some("eipalloc-me"), &snap, &wanted);
        assert_eq!(
            o.holder_of("10.0.0.20"),
            None,
            "my own association is not taken"
        );
        assert_eq!(o.holder_of("10.0.0.21"), Some("a/b"));
        assert_eq!(
            o.holder_of("10.0.0.22"),
            Some("Elastic IP 203.0.113.3 (eipalloc-unmanaged)")
        );
        assert_eq!(o.holder_of("10.0.0.23"), Some("a/c"));
        assert_eq!(
            o.holder_of("10.0.0.30"),
            None,
            "only the wanted IPs are read"
        );
    }

    #[test]
    fn lease_records_round_trip_and_legacy_leases_have_none() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "feip-x", "annotations": {
                PRIVATE_IP_ANNOTATION: "10.0.0.21", INTERFACE_ANNOTATION: "eni-a"}},
            "spec": {"holderIdentity": "n1"}
        }))
        .unwrap();
        let rec = SlotRecord::from_lease(&lease).unwrap();
        let target = Target {
            instance_id: "i-1".into(),
            network_interface_id: "eni-a".into(),
            private_ip: "10.0.0.21".into(),
        };
        assert!(rec.is("n1", &target));
        assert!(!rec.is("n2", &target));
        let other_ip = Target {
            private_ip: "10.0.0.20".into(),
            ..target.clone()
        };
        assert!(!rec.is("n1", &other_ip));
        let other_eni = Target {
            network_interface_id: "eni-b".into(),
            ..target
        };
        assert!(!rec.is("n1", &other_eni));
        let legacy: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "feip-x"}, "spec": {"holderIdentity": "n1"}
        }))
        .unwrap();
        assert_eq!(SlotRecord::from_lease(&legacy), None);
        let released: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "feip-x", "annotations": {PRIVATE_IP_ANNOTATION: "10.0.0.21"}},
            "spec": {}
        }))
        .unwrap();
        assert_eq!(SlotRecord::from_lease(&released), None);
    }

    #[test]
    fn claims_override_the_lease_until_forgotten() {
        let mut c = SlotClaims::default();
        let from_lease = || slot("n1", "10.0.0.99");
        assert_eq!(
            c.slot_of("a/x", from_lease),
            from_lease(),
            "unknown: the Lease"
        );
        c.set("a/x", slot("n1", "10.0.0.20"));
        assert_eq!(c.slot_of("a/x", from_lease), slot("n1", "10.0.0.20"));
        c.set("a/x", None);
        assert_eq!(
            c.slot_of("a/x", from_lease),
            None,
            "holds none, whatever the Lease says"
        );
        c.forget("a/x");
        assert_eq!(c.slot_of("a/x", from_lease), from_lease());
        c.set("a/y", None);
        c.clear();
        assert_eq!(c.len(), 0);
    }
}
