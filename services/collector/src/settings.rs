//! The collector's configuration.

use switchyard_config::Settings;
use switchyard_grpc::GrpcConfig;
use switchyard_service::in_section;
use switchyard_storage::StorageConfig;

switchyard_app::fleet_settings! {
    /// Everything the collector reads from defaults, its TOML file and the
    /// environment. `[grpc]` is the internal query API: loopback (or the
    /// compose network) only.
    pub struct CollectorSettings {
        grpc: GrpcConfig {
            listen: switchyard_config::Listen::loopback(50052),
            ..GrpcConfig::default()
        },
        ;
        /// `[storage]`: where samples are stored.
        pub storage: StorageConfig = StorageConfig::sqlite_for("collector"),
    }
}

impl Settings for CollectorSettings {
    fn problems(&self) -> Vec<(String, String)> {
        let mut problems = switchyard_app::fleet_problems(self);
        problems.extend(in_section("storage", self.storage.problems()));
        problems
    }
}
