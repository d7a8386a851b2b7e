//! The strings the operator writes on the API, as types: condition types,
//! the reasons of conditions and Events, and the phase. Each variant's name
//! is its string on the API (`as_str`, `Display`), so a typo is a compile
//! error and a rename is a visible API change (the tests pin every string).

use std::fmt;

/// An enum whose variants are written on the API under their own names.
macro_rules! api_strings {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The string on the API.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)*
                }
            }

            /// The variant written as `s` on the API, if any.
            pub fn parse(s: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

api_strings! {
    /// The conditions in `status.conditions`: every reconcile writes all five.
    pub enum ConditionType {
        /// The migration Job of spec.image has succeeded.
        Migrated,
        /// Something needs a person: a missing Secret, a failed migration,
        /// failing pods, a stuck rollout or a failed reconcile.
        Degraded,
        /// A migration or a rollout is under way.
        Progressing,
        /// The pods run spec.image and are ready.
        Ready,
        /// spec.suspend holds the pods at 0.
        Suspended,
    }
}

api_strings! {
    /// Reasons of conditions and of Events.
    pub enum Reason {
        // Migrated (and the Events of its transitions).
        MigrationSucceeded,
        MigrationRunning,
        MigrationFailed,
        /// Event: a migration Job was started for a new template.
        MigrationStarted,
        /// Event: a new attempt after a failed migration Job.
        MigrationRetried,
        // Degraded.
        SecretMissing,
        PodsFailing,
        RolloutStuck,
        AsExpected,
        /// A failed reconcile; followed by the API server's reason when it
        /// gave one (`ReconcileFailedForbidden`, …), see `failure_reason`.
        ReconcileFailed,
        // Progressing.
        RollingOut,
        RolloutComplete,
        // Ready.
        AllReplicasReady,
        WaitingForMigration,
        ReplicasNotReady,
        /// Event: the resource became Ready.
        Ready,
        // Suspended (Ready's reason too while suspended).
        Suspended,
        NotSuspended,
        /// Event: spec.suspend was set back to false.
        Resumed,
    }
}

api_strings! {
    /// `status.phase`: one word for `kubectl get`.
    pub enum Phase {
        Ready,
        Suspended,
        MigrationFailed,
        Degraded,
        Migrating,
        RollingOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The strings on the API: changing one breaks users' alerts and scripts.
    #[test]
    fn the_api_strings_do_not_change() {
        let strings = |all: &[&'static str]| all.join(" ");
        assert_eq!(
            strings(
                &ConditionType::ALL
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
            ),
            "Migrated Degraded Progressing Ready Suspended"
        );
        assert_eq!(
            strings(&Reason::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>()),
            "MigrationSucceeded MigrationRunning MigrationFailed MigrationStarted \
             MigrationRetried SecretMissing PodsFailing RolloutStuck AsExpected \
             ReconcileFailed RollingOut RolloutComplete AllReplicasReady \
             WaitingForMigration ReplicasNotReady Ready Suspended NotSuspended Resumed"
        );
        assert_eq!(
            strings(&Phase::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>()),
            "Ready Suspended MigrationFailed Degraded Migrating RollingOut"
        );
        assert_eq!(Reason::PodsFailing.to_string(), "PodsFailing");
        assert_eq!(ConditionType::parse("Ready"), Some(ConditionType::Ready));
        assert_eq!(ConditionType::parse("ready"), None);
        assert_eq!(Reason::parse("ReconcileFailedForbidden"), None);
    }
}
