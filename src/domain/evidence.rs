//! Which side of the activity the instance is on: **acting** (it did what the finding
//! describes: queried a mining pool's domain, connected out to a command-and-control server,
//! relayed Tor, scanned others) or **targeted** (it underwent it: was probed, brute-forced,
//! called from a Tor exit node).
//!
//! GuardDuty's `service.resourceRole` label does not answer this: real findings of types where
//! the instance is the one acting (`CryptoCurrency:EC2/BitcoinTool.B!DNS`,
//! `UnauthorizedAccess:EC2/TorRelay`, `Trojan:EC2/DropPoint`, ...) carry `TARGET`. So the side is
//! read from the finding type's documented meaning (GuardDuty's finding-type pages,
//! <https://docs.aws.amazon.com/guardduty/latest/ug/guardduty_finding-types-ec2.html>), and, for
//! the types whose side depends on the direction (brute force, custom threat lists), from the
//! finding's action: a DNS request the instance made, an outbound connection, a process on the
//! instance or malware on its volume (acting); a port probe or an inbound connection (targeted).
//! The label is the last resort, when neither says.

use serde_json::Value;

use crate::domain::finding::Finding;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The instance did what the finding describes.
    Acting,
    /// The instance underwent it (a victim).
    Targeted,
}

/// The side, and the evidence it was read from, in one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub side: Side,
    pub because: String,
}

/// What a finding type says of the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeSide {
    Acting,
    Targeted,
    /// Either: the finding's action (its direction) decides.
    ByAction,
}

/// GuardDuty's EC2 finding types that the rule passes, and the side of the instance in each,
/// as GuardDuty's finding-type pages describe them. The most specific entry (exact name, then
/// the longest prefix) wins. The README's triage table lists the same.
pub const TYPE_SIDES: &[(&str, TypeSide, &str)] = &[
    // Credentials EC2 delivered to the instance, used from elsewhere: the instance's role acts.
    (
        "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration",
        TypeSide::Acting,
        "its role credentials were used from outside the instance",
    ),
    // Backdoor: command and control, denial of service, spam, all from the instance.
    (
        "Backdoor:EC2/",
        TypeSide::Acting,
        "it talks to a command-and-control server, takes part in a denial of service or sends spam",
    ),
    (
        "CryptoCurrency:EC2/",
        TypeSide::Acting,
        "it queries or connects to cryptocurrency mining services",
    ),
    (
        "Trojan:EC2/",
        TypeSide::Acting,
        "it queries or connects to malware infrastructure (drop points, black-holed or DGA domains, DNS exfiltration)",
    ),
    (
        "Impact:EC2/",
        TypeSide::Acting,
        "it queries abused, malicious or mining domains, or sweeps ports of other hosts",
    ),
    (
        "Impact:EC2/WinRMBruteForce",
        TypeSide::ByAction,
        "WinRM brute force: the instance is the attacker when outbound, the victim when inbound",
    ),
    (
        "Recon:EC2/Portscan",
        TypeSide::Acting,
        "it scans ports of other hosts",
    ),
    (
        "Recon:EC2/PortProbe",
        TypeSide::Targeted,
        "its unprotected ports are probed by others",
    ),
    (
        "UnauthorizedAccess:EC2/TorClient",
        TypeSide::Acting,
        "it connects to the Tor network",
    ),
    (
        "UnauthorizedAccess:EC2/TorRelay",
        TypeSide::Acting,
        "it relays Tor traffic",
    ),
    // Retired by GuardDuty; findings made before still carry it.
    (
        "UnauthorizedAccess:EC2/TorIPCaller",
        TypeSide::Targeted,
        "it receives connections from Tor exit nodes",
    ),
    // The instance makes the DNS query, but GuardDuty describes it as the target of a DNS
    // rebinding technique (an application on it tricked into reading its metadata).
    (
        "UnauthorizedAccess:EC2/MetadataDNSRebind",
        TypeSide::Targeted,
        "it is the target of a DNS rebinding technique aimed at its metadata service",
    ),
    (
        "UnauthorizedAccess:EC2/SSHBruteForce",
        TypeSide::ByAction,
        "SSH brute force: the instance is the attacker when outbound, the victim when inbound",
    ),
    (
        "UnauthorizedAccess:EC2/RDPBruteForce",
        TypeSide::ByAction,
        "RDP brute force: the instance is the attacker when outbound, the victim when inbound",
    ),
    (
        "UnauthorizedAccess:EC2/MaliciousIPCaller.Custom",
        TypeSide::ByAction,
        "traffic with an address on a custom threat list, in either direction",
    ),
    // Runtime Monitoring: a process on the instance did it.
    (
        "Backdoor:Runtime/",
        TypeSide::Acting,
        "a process on the instance talks to a command-and-control server",
    ),
    (
        "CryptoCurrency:Runtime/",
        TypeSide::Acting,
        "a process on the instance mines or queries mining services",
    ),
    (
        "Trojan:Runtime/",
        TypeSide::Acting,
        "a process on the instance talks to malware infrastructure",
    ),
    (
        "Execution:Runtime/",
        TypeSide::Acting,
        "a process on the instance runs a reverse shell, a malicious file, a suspicious tool or command",
    ),
    (
        "Impact:Runtime/",
        TypeSide::Acting,
        "a process on the instance mines cryptocurrency or queries abused, malicious or mining domains",
    ),
    (
        "PrivilegeEscalation:Runtime/",
        TypeSide::Acting,
        "a process on the instance tries to gain higher privileges",
    ),
    (
        "DefenseEvasion:Runtime/",
        TypeSide::Acting,
        "a process on the instance hides itself (process injection, fileless execution, a kernel module, changed sensitive files)",
    ),
    (
        "Persistence:Runtime/",
        TypeSide::Acting,
        "a process on the instance sets up a way to come back",
    ),
    (
        "Discovery:Runtime/",
        TypeSide::Acting,
        "a process on the instance explores the system for an attacker",
    ),
    (
        "UnauthorizedAccess:Runtime/",
        TypeSide::Acting,
        "a process on the instance uses Tor or aims at the metadata service",
    ),
    (
        "Execution:EC2/",
        TypeSide::Acting,
        "Malware Protection found a malicious or suspicious file on its volumes",
    ),
    (
        "Execution:ECS/",
        TypeSide::Acting,
        "Malware Protection found a malicious or suspicious file on the container host's volumes",
    ),
    (
        "Execution:Kubernetes/",
        TypeSide::Acting,
        "Malware Protection found a malicious or suspicious file on the node's volumes",
    ),
    (
        "Execution:Container/",
        TypeSide::Acting,
        "Malware Protection found a malicious or suspicious file on the container host's volumes",
    ),
    (
        "DefenseEvasion:EC2/",
        TypeSide::Acting,
        "it resolves names around the VPC's resolver (an unusual resolver, DNS over HTTPS or TLS)",
    ),
    (
        "Behavior:EC2/",
        TypeSide::Acting,
        "it talks on a port or sends a volume of traffic unusual for it (an anomaly against its own baseline)",
    ),
    (
        "AttackSequence:EC2/",
        TypeSide::Acting,
        "GuardDuty's Extended Threat Detection correlated signals of a multi-stage attack naming it among a compromised group",
    ),
];

/// The table's entry for a finding type: the exact name, else the longest matching prefix.
pub fn type_side(finding_type: &str) -> Option<(&'static str, TypeSide, &'static str)> {
    TYPE_SIDES
        .iter()
        .filter(|(t, _, _)| finding_type.starts_with(t))
        .max_by_key(|(t, _, _)| t.len())
        .copied()
}

/// Which side the instance is on in this finding, and why.
pub fn side(finding: &Finding) -> Evidence {
    let finding_type = finding.finding_type.as_deref().unwrap_or("");
    let service = finding.service.as_ref();
    let acting = |because: String| Evidence {
        side: Side::Acting,
        because,
    };
    let action = service
        .and_then(|s| s.action.as_ref())
        .and_then(from_action);
    let entry = type_side(finding_type);
    // A type documented as one where the instance is the target stays one, whatever else the
    // finding carries.
    if let Some((_, TypeSide::Targeted, meaning)) = entry {
        return Evidence {
            side: Side::Targeted,
            because: format!("{finding_type}: {meaning} (targeted)"),
        };
    }
    if service.is_some_and(|s| has_content(s.runtime_details.as_ref(), "/process")) {
        return acting(format!(
            "a process on the instance did it (Runtime Monitoring): {finding_type} (acting)"
        ));
    }
    if service.is_some_and(|s| has_content(s.ebs_volume_scan_details.as_ref(), "/scanDetections")) {
        return acting("malware was found on the instance's volume (acting)".into());
    }
    match entry {
        // A type named in full (TorRelay, Portscan, ...) is what its name says.
        Some((name, TypeSide::Acting, meaning)) if !name.ends_with('/') => {
            return acting(format!("{finding_type}: {meaning} (acting)"));
        }
        // A family (Backdoor:EC2/, Impact:EC2/, ...): acting, unless the finding shows the
        // instance at the receiving end (a future two-sided type of the family).
        Some((_, TypeSide::Acting, meaning)) => {
            return match action {
                Some(e) if e.side == Side::Targeted => e,
                _ => acting(format!("{finding_type}: {meaning} (acting)")),
            };
        }
        _ => {}
    }
    if let Some(evidence) = action {
        return evidence;
    }
    let label = service.and_then(|s| s.resource_role.as_deref());
    match label {
        Some(l) if l.eq_ignore_ascii_case("TARGET") => Evidence {
            side: Side::Targeted,
            because: format!(
                "{finding_type}: the finding's action does not say the direction; GuardDuty labels the instance TARGET (targeted)"
            ),
        },
        Some(l) if l.eq_ignore_ascii_case("ACTOR") => acting(format!(
            "{finding_type}: the finding's action does not say the direction; GuardDuty labels the instance ACTOR (acting)"
        )),
        _ => acting(format!(
            "{finding_type}: nothing in the finding says the instance was only a target, and the rule matched it (acting)"
        )),
    }
}

/// Whether `value` holds a non-empty object or array at `pointer`: evidence is what is there,
/// not an empty placeholder an export wrote.
fn has_content(value: Option<&Value>, pointer: &str) -> bool {
    match value.and_then(|v| v.pointer(pointer)) {
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        _ => false,
    }
}

/// The side as the finding's action shows it, if it does.
fn from_action(action: &Value) -> Option<Evidence> {
    fn text(v: Option<&Value>) -> Option<&str> {
        v.and_then(Value::as_str).map(crate::domain::finding::clip)
    }
    let kind = text(action.get("actionType"))?;
    let (side, because) = match kind {
        "DNS_REQUEST" => {
            let domain = text(action.pointer("/dnsRequestAction/domain")).unwrap_or("a domain");
            (
                Side::Acting,
                format!("the instance made DNS requests for {domain} (acting)"),
            )
        }
        "NETWORK_CONNECTION" => {
            let remote =
                text(action.pointer("/networkConnectionAction/remoteIpDetails/ipAddressV4"))
                    .unwrap_or("a remote address");
            match text(action.pointer("/networkConnectionAction/connectionDirection")) {
                Some(d) if d.eq_ignore_ascii_case("OUTBOUND") => (
                    Side::Acting,
                    format!("the instance connected out to {remote} (acting)"),
                ),
                Some(d) if d.eq_ignore_ascii_case("INBOUND") => (
                    Side::Targeted,
                    format!("{remote} connected in to the instance (targeted)"),
                ),
                _ => return None,
            }
        }
        "PORT_PROBE" => (
            Side::Targeted,
            "others probed the instance's ports (targeted)".to_owned(),
        ),
        "AWS_API_CALL" => (
            Side::Acting,
            "the instance's credentials called AWS APIs (acting)".to_owned(),
        ),
        _ => return None,
    };
    Some(Evidence { side, because })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn finding(v: Value) -> Finding {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_label_does_not_make_an_acting_type_a_victim() {
        for t in [
            "CryptoCurrency:EC2/BitcoinTool.B!DNS",
            "UnauthorizedAccess:EC2/TorRelay",
            "UnauthorizedAccess:EC2/TorClient",
            "Trojan:EC2/DropPoint",
            "Trojan:EC2/BlackholeTraffic",
            "Backdoor:EC2/Spambot",
        ] {
            let f = finding(json!({"type": t, "service": {"resourceRole": "TARGET"}}));
            assert_eq!(side(&f).side, Side::Acting, "{t}");
        }
    }

    #[test]
    fn probes_and_inbound_brute_force_are_targets() {
        let probe = finding(json!({"type": "Recon:EC2/PortProbeUnprotectedPort",
            "service": {"resourceRole": "ACTOR", "action": {"actionType": "PORT_PROBE"}}}));
        assert_eq!(side(&probe).side, Side::Targeted);
        let inbound = finding(json!({"type": "UnauthorizedAccess:EC2/SSHBruteForce",
            "service": {"resourceRole": "ACTOR", "action": {"actionType": "NETWORK_CONNECTION",
                "networkConnectionAction": {"connectionDirection": "INBOUND",
                    "remoteIpDetails": {"ipAddressV4": "198.51.100.1"}}}}}));
        let e = side(&inbound);
        assert_eq!(e.side, Side::Targeted);
        assert!(e.because.contains("198.51.100.1"), "{}", e.because);
        let outbound = finding(json!({"type": "UnauthorizedAccess:EC2/SSHBruteForce",
            "service": {"resourceRole": "TARGET", "action": {"actionType": "NETWORK_CONNECTION",
                "networkConnectionAction": {"connectionDirection": "OUTBOUND"}}}}));
        assert_eq!(side(&outbound).side, Side::Acting);
    }

    #[test]
    fn without_an_action_the_label_decides_the_direction_types() {
        let labelled = finding(json!({"type": "UnauthorizedAccess:EC2/RDPBruteForce",
            "service": {"resourceRole": "TARGET"}}));
        assert_eq!(side(&labelled).side, Side::Targeted);
        let unlabelled = finding(json!({"type": "UnauthorizedAccess:EC2/RDPBruteForce"}));
        assert_eq!(side(&unlabelled).side, Side::Acting);
    }

    #[test]
    fn runtime_and_malware_evidence_is_acting() {
        let runtime = finding(json!({"type": "Execution:Runtime/ReverseShell",
            "service": {"resourceRole": "TARGET", "runtimeDetails": {"process": {"name": "sh"}}}}));
        assert_eq!(side(&runtime).side, Side::Acting);
        let malware = finding(json!({"type": "Execution:EC2/MaliciousFile",
            "service": {"resourceRole": "TARGET", "ebsVolumeScanDetails": {"scanId": "x",
                "scanDetections": {"threatDetectedByName": {"itemCount": 1}}}}}));
        assert_eq!(side(&malware).side, Side::Acting);
        // Empty placeholders are not evidence, and never turn a documented target into an actor.
        let empty = finding(json!({"type": "Policy:EC2/SomethingNew",
            "service": {"resourceRole": "TARGET", "runtimeDetails": {}, "ebsVolumeScanDetails": {}}}));
        assert_eq!(side(&empty).side, Side::Targeted);
        // The type alone says malware is on the instance: acting, even without the details.
        let typed = finding(json!({"type": "Execution:EC2/MaliciousFile",
            "service": {"resourceRole": "TARGET", "runtimeDetails": {}, "ebsVolumeScanDetails": {}}}));
        assert_eq!(side(&typed).side, Side::Acting);
        let probe = finding(json!({"type": "Recon:EC2/PortProbeUnprotectedPort",
            "service": {"runtimeDetails": {"process": {"name": "sh"}}}}));
        assert_eq!(side(&probe).side, Side::Targeted);
    }

    #[test]
    fn a_family_type_received_by_the_instance_is_a_target() {
        let inbound = finding(json!({"type": "Impact:EC2/FutureBruteForce",
            "service": {"action": {"actionType": "NETWORK_CONNECTION",
                "networkConnectionAction": {"connectionDirection": "INBOUND"}}}}));
        assert_eq!(side(&inbound).side, Side::Targeted);
        let unknown = finding(json!({"type": "Impact:EC2/FutureBruteForce",
            "service": {"resourceRole": "TARGET", "action": {"actionType": "NETWORK_CONNECTION",
                "networkConnectionAction": {"connectionDirection": "UNKNOWN"}}}}));
        assert_eq!(side(&unknown).side, Side::Acting, "the family's meaning");
        // A type named in full keeps its meaning whatever the direction.
        let relay = finding(json!({"type": "UnauthorizedAccess:EC2/TorRelay",
            "service": {"action": {"actionType": "NETWORK_CONNECTION",
                "networkConnectionAction": {"connectionDirection": "INBOUND"}}}}));
        assert_eq!(side(&relay).side, Side::Acting);
    }

    #[test]
    fn the_readme_lists_every_entry_of_the_table() {
        let readme = include_str!("../../README.md");
        for (t, side, _) in TYPE_SIDES {
            let row = readme
                .lines()
                // Rows of the triage table: those with a side column.
                .filter(|l| {
                    l.starts_with("| `")
                        && ["| acting |", "| targeted |", "| by the action |"]
                            .iter()
                            .any(|side| l.contains(side))
                })
                .find(|l| {
                    let first_cell = l.split(" | ").next().unwrap_or_default();
                    first_cell.contains(&format!("`{t}`"))
                })
                .unwrap_or_else(|| panic!("the README's triage table has no row for {t}"));
            let said = match side {
                TypeSide::Acting => "| acting |",
                TypeSide::Targeted => "| targeted |",
                TypeSide::ByAction => "| by the action |",
            };
            assert!(row.contains(said), "{t}: {row}");
        }
    }

    #[test]
    fn the_most_specific_entry_wins() {
        assert_eq!(
            type_side("Impact:EC2/WinRMBruteForce").map(|e| e.1),
            Some(TypeSide::ByAction)
        );
        assert_eq!(
            type_side("Impact:EC2/PortSweep").map(|e| e.1),
            Some(TypeSide::Acting)
        );
        assert_eq!(
            type_side("Recon:EC2/PortProbeEMRUnprotectedPort").map(|e| e.1),
            Some(TypeSide::Targeted)
        );
    }
}
