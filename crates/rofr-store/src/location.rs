//! Where a broker's data lives: a SQLite file, or a PostgreSQL database named by URL.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::{PostgresStore, Result, SqliteStore, Store, StoreError};

/// A database: `postgres://…` (or `postgresql://…`) names a PostgreSQL database; any
/// other text is the path of a SQLite file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl FromStr for Location {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Location, String> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            database_name(text).ok_or_else(|| {
                format!("`{}` names no database: end it with /NAME", redact(text))
            })?;
            Ok(Location::Postgres(text.to_owned()))
        } else if text.contains("://") {
            Err(format!(
                "`{}` is neither a SQLite file nor a postgres:// URL",
                redact(text)
            ))
        } else if text.is_empty() {
            Err("the database path is empty".to_owned())
        } else {
            Ok(Location::Sqlite(PathBuf::from(text)))
        }
    }
}

impl fmt::Display for Location {
    /// The path, or the URL without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl Location {
    /// Opens the database, bringing its schema up to date.
    pub fn open(&self) -> Result<Box<dyn Store>> {
        Ok(match self {
            Location::Sqlite(path) => Box::new(SqliteStore::open(path)?),
            Location::Postgres(url) => Box::new(PostgresStore::open(url)?),
        })
    }

    /// Whether other brokers may write to the same database at the same time.
    pub fn shared(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }

    /// Whether the database is there already (a server database always is, as far as
    /// this can tell without connecting).
    pub fn exists(&self) -> bool {
        match self {
            Location::Sqlite(path) => path.exists(),
            Location::Postgres(_) => true,
        }
    }

    /// Applies the migrations not yet applied; returns the schema version before and
    /// after.
    pub fn migrate(&self) -> Result<(usize, usize)> {
        match self {
            Location::Sqlite(path) => {
                let before = if path.exists() {
                    SqliteStore::version_of(path)?
                } else {
                    0
                };
                let after = SqliteStore::open(path)?.schema_version()?;
                Ok((before, after))
            }
            Location::Postgres(url) => PostgresStore::migrate_url(url),
        }
    }

    /// The database's own name: the file name, or the last part of the URL's path.
    pub fn name(&self) -> String {
        match self {
            Location::Sqlite(path) => path
                .file_name()
                .map_or_else(|| "rofr".to_owned(), |n| n.to_string_lossy().into_owned()),
            Location::Postgres(url) => database_name(url).unwrap_or("rofr").to_owned(),
        }
    }
}

/// The database name in a `postgres://user@host:port/NAME?options` URL.
fn database_name(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let path = &rest[rest.find('/')? + 1..];
    let name = path.split(['?', '#']).next().unwrap_or("");
    (!name.is_empty()).then_some(name)
}

/// The URL with another database name.
fn with_database(url: &str, name: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let slash = rest.find('/')?;
    let path = &rest[slash + 1..];
    let options = path.find(['?', '#']).map_or("", |i| &path[i..]);
    Some(format!("{scheme}://{}/{name}{options}", &rest[..slash]))
}

/// The URL with any password replaced by `***`, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _password)) => format!("{scheme}://{name}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A PostgreSQL database made for one test or benchmark run and dropped with this
/// value, so that every run starts empty.
pub struct ScratchDatabase {
    admin: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// Creates a new, empty database on the server `admin_url` points at (its own
    /// database is only used to connect).
    pub fn create(admin_url: &str, prefix: &str) -> Result<ScratchDatabase> {
        let suffix: u64 = rand::random();
        let name = format!("{prefix}_{suffix:016x}");
        let url = with_database(admin_url, &name).ok_or_else(|| {
            StoreError::Setup(format!(
                "`{}` is not a postgres://HOST/DATABASE URL",
                redact(admin_url)
            ))
        })?;
        PostgresStore::admin(admin_url, &format!("CREATE DATABASE \"{name}\""))?;
        Ok(ScratchDatabase {
            admin: admin_url.to_owned(),
            name,
            url,
        })
    }

    /// For a test named `test`: a scratch database on the server that
    /// `ROFR_TEST_DATABASE_URL` names, or `None` after saying the test is skipped
    /// where that is unset. A server that is named but refuses fails the test.
    pub fn for_test(prefix: &str, test: &str) -> Option<ScratchDatabase> {
        let Ok(server) = std::env::var("ROFR_TEST_DATABASE_URL") else {
            eprintln!("skipped {test} on PostgreSQL: ROFR_TEST_DATABASE_URL is unset");
            return None;
        };
        match ScratchDatabase::create(&server, prefix) {
            Ok(database) => Some(database),
            Err(error) => panic!("{test}: cannot make a scratch database: {error}"),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn location(&self) -> Location {
        Location::Postgres(self.url.clone())
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(error) = PostgresStore::admin(&self.admin, &sql) {
            eprintln!("could not drop the scratch database {}: {error}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_postgres_and_paths_name_sqlite() {
        assert_eq!(
            "rofr.db".parse::<Location>(),
            Ok(Location::Sqlite("rofr.db".into()))
        );
        assert_eq!(
            "postgres://u@h:5432/rofr".parse::<Location>(),
            Ok(Location::Postgres("postgres://u@h:5432/rofr".into()))
        );
        assert!("postgres://u@h:5432/".parse::<Location>().is_err());
        assert!("mysql://h/x".parse::<Location>().is_err());
        assert_eq!(
            Location::Postgres("postgresql://h/db?sslmode=disable".into()).name(),
            "db"
        );
    }

    #[test]
    fn a_scratch_url_keeps_host_and_options() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres?sslmode=disable", "t1").as_deref(),
            Some("postgres://u@h:5432/t1?sslmode=disable")
        );
        assert_eq!(
            with_database("postgres://h/postgres", "t2").as_deref(),
            Some("postgres://h/t2")
        );
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://rofr:s3cret@db:5432/rofr"),
            "postgres://rofr:***@db:5432/rofr"
        );
        assert_eq!(
            Location::Postgres("postgres://u@h/x".into()).to_string(),
            "postgres://u@h/x"
        );
    }
}
