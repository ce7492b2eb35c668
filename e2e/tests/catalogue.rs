//! The method catalogue (`proto/src/catalogue.rs`, printed in
//! `docs/wire-format.md`) is what the running services really serve: each
//! server, asked for a method it does not have, lists the methods it serves,
//! and that list is exactly the catalogue's for its topic.

mod support;

use std::collections::BTreeSet;

use support::{BOUND, Fleet, FleetOptions};
use switchyard_messaging::{CallError, RpcClient, Target};
use switchyard_proto::catalogue::{self, Kind};
use switchyard_proto::messaging::v1::PromoteCanary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_serves_exactly_the_catalogued_methods_of_its_topic() {
    let fleet = Fleet::start(FleetOptions::default()).await;
    let transport = fleet.transport("catalogue").await;
    let client = RpcClient::new(&transport).await.expect("client");

    for topic in [
        catalogue::topic::COLLECTOR,
        catalogue::topic::ALARMS,
        catalogue::topic::ROLLOUT,
    ] {
        let target = Target::topic(&fleet.exchange, topic);
        let answer = client
            .call::<_, PromoteCanary>(&target, "no_such_method", &PromoteCanary::default(), BOUND)
            .await;
        let Err(CallError::NoSuchMethod { served, .. }) = answer else {
            panic!("{topic}: expected NO_SUCH_METHOD, got {answer:?}");
        };
        let served: BTreeSet<&str> = served.iter().map(String::as_str).collect();
        let catalogued: BTreeSet<&str> = catalogue::methods_of(topic).map(|m| m.name).collect();
        assert_eq!(served, catalogued, "topic `{topic}`");
    }

    // Every catalogued call is answered as a call: never NO_SUCH_METHOD, even
    // for an empty request (which may well be refused as invalid).
    for method in catalogue::METHODS.iter().filter(|m| m.kind == Kind::Call) {
        let target = Target::topic(&fleet.exchange, method.topic);
        let answer = client
            .call::<_, PromoteCanary>(&target, method.name, &PromoteCanary::default(), BOUND)
            .await;
        assert!(
            !matches!(
                answer,
                Err(CallError::NoSuchMethod { .. } | CallError::Timeout(_))
            ),
            "{}: {answer:?}",
            method.name
        );
    }
}
