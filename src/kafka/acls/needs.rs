//! Which ACLs each command needs, from what its code calls (the module
//! documentation of [`super`] lists them with the reasons).

use std::sync::Arc;

use super::{
    check_principal, internal_prefix, Acl, AclSet, AclsError, Operation, PatternType, ResourceType,
};
use crate::commit::config::CommitConfig;
use crate::engine::{Engine, EngineOptions};
use crate::ingest::config::IngestConfig;
use crate::kafka::run::topics::Plan;
use crate::state::MemoryBackend;
use crate::topology::kafka::Guarantee;
use crate::topology::Topology;

/// What `sluice run` on `topo` needs, under `guarantee`.
pub fn for_run(
    topo: &Arc<Topology>,
    guarantee: Guarantee,
    principal: &str,
) -> Result<AclSet, AclsError> {
    check_principal(principal)?;
    let plan = run_plan(topo)?;
    let mut acls = Vec::new();
    for topic in plan.subscriptions() {
        if let Some(r) = plan.repartition_of(topic) {
            let reason = format!("input, forwarded to {}: fetch, commit offsets", r.to);
            acls.push(Acl::topic(topic, Operation::Read, reason));
        } else if plan.repartitions.iter().all(|r| r.to != topic) {
            acls.push(Acl::topic(
                topic,
                Operation::Read,
                "input: fetch, commit offsets".into(),
            ));
        }
    }
    acls.extend(internal_topic_acls(&topo.app_id, &plan));
    for sink in &plan.sinks {
        acls.push(Acl::topic(sink, Operation::Write, "sink: produce".into()));
        acls.push(Acl::topic(
            sink,
            Operation::Create,
            "sink: create when missing".into(),
        ));
    }
    let dl = &plan.dead_letter;
    acls.push(Acl::topic(
        dl,
        Operation::Write,
        "dead letters: produce".into(),
    ));
    acls.push(Acl::topic(
        dl,
        Operation::Create,
        "dead letters: create when missing".into(),
    ));
    acls.push(Acl::new(
        ResourceType::Group,
        &topo.app_id,
        PatternType::Literal,
        Operation::Read,
        "consumer group: join, commit offsets".into(),
    ));
    if guarantee == Guarantee::ExactlyOnce {
        acls.push(Acl::new(
            ResourceType::TransactionalId,
            &internal_prefix(&topo.app_id),
            PatternType::Prefixed,
            Operation::Write,
            "transactional ids, one per instance: transactions".into(),
        ));
    }
    Ok(AclSet {
        principal: principal.to_owned(),
        acls,
    })
}

/// The topics of a run, as `sluice run` computes them.
fn run_plan(topo: &Arc<Topology>) -> Result<Plan, AclsError> {
    let opts = EngineOptions::default();
    let probe = Engine::open(Arc::clone(topo), Box::new(MemoryBackend::default()), &opts)
        .map_err(|e| AclsError::Plan(e.to_string()))?;
    Plan::new(topo, &probe.store_names()).map_err(|e| AclsError::Plan(e.to_string()))
}

fn internal_topic_acls(app_id: &str, plan: &Plan) -> Vec<Acl> {
    let prefix = internal_prefix(app_id);
    let mut topics: Vec<&str> = plan.changelog_topics().collect();
    topics.extend(plan.repartitions.iter().map(|r| r.to.as_str()));
    let listed = topics.join(", ");
    let prefixed = |operation, what: &str| {
        Acl::new(
            ResourceType::Topic,
            &prefix,
            PatternType::Prefixed,
            operation,
            format!("internal topics ({listed}): {what}"),
        )
    };
    let mut acls = vec![
        prefixed(Operation::Create, "create when missing"),
        prefixed(Operation::Write, "produce changelog and forwarded records"),
        prefixed(Operation::Read, "restore, read repartitioned input"),
    ];
    if !plan.repartitions.is_empty() {
        acls.push(prefixed(
            Operation::Delete,
            "purge committed repartition records (else a warning, and they stay)",
        ));
    }
    acls
}

/// What `sluice commit` reading from Kafka needs.
pub fn for_commit(config: &CommitConfig, principal: &str) -> Result<AclSet, AclsError> {
    check_principal(principal)?;
    let k = &config.kafka;
    let mut acls = vec![
        Acl::topic(
            &k.topic,
            Operation::Read,
            "intents: fetch, commit offsets".into(),
        ),
        Acl::new(
            ResourceType::Group,
            &k.group,
            PatternType::Literal,
            Operation::Read,
            "consumer group: join, commit offsets".into(),
        ),
        Acl::topic(
            &k.dead_letter_topic,
            Operation::Write,
            "dead letters: produce (the topic must exist)".into(),
        ),
    ];
    if let Some(topic) = &k.report_topic {
        acls.push(Acl::topic(
            topic,
            Operation::Write,
            "reports: produce (the topic must exist)".into(),
        ));
    }
    Ok(AclSet {
        principal: principal.to_owned(),
        acls,
    })
}

/// What `sluice ingest` needs: Write on every endpoint's topic, once per
/// topic however many endpoints share it.
pub fn for_ingest(config: &IngestConfig, principal: &str) -> Result<AclSet, AclsError> {
    check_principal(principal)?;
    let mut acls: Vec<Acl> = Vec::new();
    for endpoint in &config.endpoints {
        if let Some(acl) = acls.iter_mut().find(|a| a.resource_name == endpoint.topic) {
            acl.reason.push_str(&format!(", /hooks/{}", endpoint.name));
            continue;
        }
        acls.push(Acl::topic(
            &endpoint.topic,
            Operation::Write,
            format!(
                "endpoint topic: produce (the topic must exist) for /hooks/{}",
                endpoint.name
            ),
        ));
    }
    Ok(AclSet {
        principal: principal.to_owned(),
        acls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(extra_source: &str) -> Arc<Topology> {
        let src = format!(
            "[app]\nid = \"app\"\n\
             [[sources]]\nname = \"images\"\ntopic = \"img\"\nkind = \"image\"\n{extra_source}\
             [[operators]]\nname = \"dedup\"\ntype = \"dedup\"\ninput = \"images\"\nkey = [\"service\"]\nttl = \"1m\"\n\
             [[sinks]]\nname = \"out\"\ninput = \"dedup\"\ntopic = \"intents\"\n"
        );
        Arc::new(Topology::parse("t.toml", &src).expect("valid topology"))
    }

    fn entries(set: &AclSet) -> Vec<String> {
        set.acls
            .iter()
            .map(|a| {
                format!(
                    "{:?} {:?} {} {}",
                    a.resource_type, a.pattern_type, a.resource_name, a.operation
                )
            })
            .collect()
    }

    #[test]
    fn a_run_needs_its_inputs_outputs_internal_topics_group_and_transactional_ids() {
        let set = for_run(&topo(""), Guarantee::ExactlyOnce, "User:sluice").unwrap();
        assert_eq!(
            entries(&set),
            [
                "Topic Literal img Read",
                "Topic Prefixed app- Create",
                "Topic Prefixed app- Write",
                "Topic Prefixed app- Read",
                "Topic Literal intents Write",
                "Topic Literal intents Create",
                "Topic Literal app.dead-letter Write",
                "Topic Literal app.dead-letter Create",
                "Group Literal app Read",
                "TransactionalId Prefixed app- Write",
            ]
        );
        assert!(
            set.acls[1].reason.contains("app-dedup-changelog"),
            "{:?}",
            set.acls[1]
        );
    }

    #[test]
    fn at_least_once_needs_no_transactional_id() {
        let set = for_run(&topo(""), Guarantee::AtLeastOnce, "User:sluice").unwrap();
        assert!(set
            .acls
            .iter()
            .all(|a| a.resource_type != ResourceType::TransactionalId));
    }

    #[test]
    fn repartitioned_sources_are_read_raw_and_purged() {
        let extra = "[[sources]]\nname = \"raw\"\ntopic = \"unkeyed\"\nkind = \"image\"\nrepartition = true\n";
        let set = for_run(&topo(extra), Guarantee::ExactlyOnce, "User:sluice").unwrap();
        let e = entries(&set);
        assert!(
            e.contains(&"Topic Literal unkeyed Read".to_owned()),
            "{e:?}"
        );
        assert!(
            e.contains(&"Topic Prefixed app- Delete".to_owned()),
            "{e:?}"
        );
        // The repartition topic is read through the prefix, not on its own.
        assert!(
            !e.iter().any(|a| a.contains("app-raw-repartition")),
            "{e:?}"
        );
    }

    #[test]
    fn the_committer_reads_its_topic_and_group_and_writes_its_dead_letters_and_reports() {
        let config = CommitConfig::parse(
            "c.toml",
            "[repository]\nurl = \"file:///srv/deploy.git\"\n[author]\nname = \"S\"\nemail = \"s@example.com\"\n\
             [kafka]\ntopic = \"t\"\ngroup = \"g\"\n\
             [[environments]]\nname = \"prod\"\nbranch = \"main\"\ndirectory = \"envs/prod\"\n",
        )
        .unwrap();
        let set = for_commit(&config, "User:committer").unwrap();
        assert_eq!(
            entries(&set),
            [
                "Topic Literal t Read",
                "Group Literal g Read",
                "Topic Literal g.dead-letter Write"
            ]
        );
        let with_reports = CommitConfig::parse(
            "c.toml",
            "[repository]\nurl = \"file:///srv/deploy.git\"\n[author]\nname = \"S\"\nemail = \"s@example.com\"\n\
             [kafka]\ntopic = \"t\"\ngroup = \"g\"\nreport_topic = \"r\"\n\
             [[environments]]\nname = \"prod\"\nbranch = \"main\"\ndirectory = \"envs/prod\"\n",
        )
        .unwrap();
        let set = for_commit(&with_reports, "User:committer").unwrap();
        assert_eq!(
            entries(&set)[3..],
            ["Topic Literal r Write"],
            "the report topic, when there is one"
        );
    }

    #[test]
    fn a_principal_needs_a_type_and_a_name() {
        for bad in ["sluice", "User:", ":x"] {
            assert!(
                for_run(&topo(""), Guarantee::ExactlyOnce, bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn command_lines_group_operations_by_resource_and_quote_for_the_shell() {
        let set = for_run(&topo(""), Guarantee::ExactlyOnce, "User:O'Brien").unwrap();
        let text = set.command_lines("k:9092");
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert_eq!(
            lines[1],
            r"kafka-acls.sh --bootstrap-server k:9092 --add --allow-principal 'User:O'\''Brien' --operation Create --operation Write --operation Read --topic app- --resource-pattern-type prefixed"
        );
        assert!(
            text.contains("--transactional-id app- --resource-pattern-type prefixed"),
            "{text}"
        );
        assert!(
            text.starts_with("# input: Read (fetch, commit offsets)\n"),
            "{text}"
        );
    }

    #[test]
    fn the_gateway_writes_each_endpoint_topic_once() {
        let config = IngestConfig::parse(
            "i.toml",
            "[listen]\naddress = \"127.0.0.1:8080\"\n\
             [[endpoints]]\nname = \"alerts\"\ntopic = \"alert-events\"\nformat = \"alertmanager\"\nkind = \"alert\"\nauth = { type = \"none\" }\n\
             [[endpoints]]\nname = \"harbor\"\ntopic = \"image-events\"\nformat = \"harbor\"\nkind = \"image\"\nauth = { type = \"none\" }\n\
             [[endpoints]]\nname = \"quay\"\ntopic = \"image-events\"\nformat = \"quay\"\nkind = \"image\"\nauth = { type = \"none\" }\n",
        )
        .unwrap();
        let set = for_ingest(&config, "User:gateway").unwrap();
        assert_eq!(
            entries(&set),
            [
                "Topic Literal alert-events Write",
                "Topic Literal image-events Write"
            ]
        );
        assert!(
            set.acls[1].reason.ends_with("/hooks/harbor, /hooks/quay"),
            "{:?}",
            set.acls[1]
        );
        assert!(for_ingest(&config, "gateway").is_err());
    }
}
