// figment's Jail closures return its large error type; fine in tests.
#![allow(clippy::result_large_err)]

use super::*;
use figment::Jail;

fn home_in(dir: &Path) -> Home {
    Home { dir: dir.to_path_buf(), config_file: dir.join("config.yaml") }
}

fn load_in(jail: &Jail) -> Result<Config, ConfigError> {
    Config::load(&home_in(jail.directory()), &FlagOverrides::default())
}

/// The template `duckpond init` writes must mean exactly the built-in defaults,
/// so the file documents what running without one does.
#[test]
fn template_matches_defaults() {
    Jail::expect_with(|jail| {
        jail.create_file("config.yaml", TEMPLATE_YAML)?;
        let from_template = load_in(jail).unwrap();
        std::fs::remove_file(jail.directory().join("config.yaml")).unwrap();
        let without_file = load_in(jail).unwrap();
        assert_eq!(from_template, without_file);
        assert_eq!(without_file.server.port, 8000);
        Ok(())
    });
}

/// Relative paths resolve against the home; sqlite URLs become absolute.
#[test]
fn relative_paths_resolve_against_home() {
    Jail::expect_with(|jail| {
        let c = load_in(jail).unwrap();
        let home = jail.directory();
        assert_eq!(c.storage.local_path, home.join("data"));
        assert_eq!(c.duckdb.extension_directory, home.join("extensions"));
        assert_eq!(c.database.url, format!("sqlite://{}", home.join("metadata.db").display()));
        Ok(())
    });
}

/// Environment variables override the file; flags override both.
#[test]
fn env_overrides_file_and_flags_override_env() {
    Jail::expect_with(|jail| {
        jail.create_file("config.yaml", "server:\n  port: 7000\n  host: 10.0.0.1\nduckdb:\n  threads: 2\n")?;
        jail.set_env("DUCKPOND_SERVER__PORT", "9001");
        jail.set_env("DUCKPOND_LIMITS__DEFAULT_MAX_STORAGE_GB", "3");
        // Not configuration: must be ignored, not rejected as unknown.
        jail.set_env("DUCKPOND_HOME", "/somewhere");
        jail.set_env("DUCKPOND_API_KEY", "dpk_x");
        let c = load_in(jail).unwrap();
        assert_eq!(c.server.port, 9001);
        assert_eq!(c.server.host, "10.0.0.1");
        assert_eq!(c.duckdb.threads, 2);
        assert_eq!(c.limits.default_max_storage_gb, 3);
        let flags = FlagOverrides { host: Some("127.0.0.2".into()), port: Some(1234) };
        let c = Config::load(&home_in(jail.directory()), &flags).unwrap();
        assert_eq!((c.server.host.as_str(), c.server.port), ("127.0.0.2", 1234));
        Ok(())
    });
}

/// A misspelt key in the file is an error that names it.
#[test]
fn unknown_field_in_file_is_named() {
    Jail::expect_with(|jail| {
        jail.create_file("config.yaml", "server:\n  prot: 8000\n")?;
        let err = load_in(jail).unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
        Ok(())
    });
}

/// A misspelt section in the environment is an error that names it.
#[test]
fn unknown_env_override_is_named() {
    Jail::expect_with(|jail| {
        jail.set_env("DUCKPOND_SERVR__PORT", "1");
        let err = load_in(jail).unwrap_err().to_string();
        assert!(err.contains("servr"), "{err}");
        Ok(())
    });
}

/// Wrong types and disallowed values name the field.
#[test]
fn invalid_values_are_named() {
    Jail::expect_with(|jail| {
        jail.create_file("config.yaml", "server:\n  port: eighty\n")?;
        let err = load_in(jail).unwrap_err().to_string();
        assert!(err.contains("port"), "{err}");
        jail.create_file("config.yaml", "database:\n  url: mysql://x\n")?;
        let err = load_in(jail).unwrap_err().to_string();
        assert!(err.contains("database.url"), "{err}");
        jail.create_file("config.yaml", "notebooks:\n  port_range: 9-3\n")?;
        let err = load_in(jail).unwrap_err().to_string();
        assert!(err.contains("port range"), "{err}");
        jail.create_file("config.yaml", "duckdb:\n  threads: 0\n")?;
        let err = load_in(jail).unwrap_err().to_string();
        assert!(err.contains("duckdb.threads"), "{err}");
        Ok(())
    });
}

#[test]
fn port_range_round_trips() {
    let r: PortRange = "10000-10099".parse().unwrap();
    assert_eq!((r.first, r.last), (10000, 10099));
    assert_eq!(r.to_string(), "10000-10099");
    assert!("0-5".parse::<PortRange>().is_err());
    assert!("abc".parse::<PortRange>().is_err());
}
