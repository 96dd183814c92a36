//! The schema on a ClickHouse cluster, derived from the single-node migrations.
//!
//! Migrations are written once, for one node (`deploy/clickhouse/migrations/`). With
//! `--clickhouse-cluster NAME` the runner passes every statement through [`ClusterDdl`], which
//! turns it into the statements that build the same schema on every node of cluster `NAME`:
//!
//! - `CREATE TABLE t (…) ENGINE = XMergeTree(args) …` becomes the node-local table
//!   `t_local … ENGINE = ReplicatedXMergeTree('/clickhouse/tables/{shard}/<db>/t_local',
//!   '{replica}', args) …` on every node, and `t`, a `Distributed` table over the `t_local`s.
//!   Queries keep using `t` unchanged: reads fan out to one replica of every shard, writes are
//!   routed by the sharding key. The sharding key hashes the first two columns of the sorting
//!   key (`cityHash64(toString(a), toString(b))`): every copy of a row identity has the same
//!   sorting key, so all copies land on one shard and `FINAL` and merges see them together. For
//!   `events` that is `(tenant_id, device_id)`: a device's whole stream lives on one shard.
//! - `CREATE MATERIALIZED VIEW v TO t AS SELECT … FROM s` becomes a view on every node that
//!   reads `s_local` (it fires for the rows inserted on that node, once per row: replication
//!   fetches do not fire views) and writes into the `Distributed` `t`, so derived rows are placed
//!   by `t`'s own sharding key, exactly like rows written directly or by a backfill.
//! - A view with its own storage (`CREATE MATERIALIZED VIEW v ENGINE = … [POPULATE] AS SELECT`)
//!   becomes the same three pieces: `v_local` (its structure taken from the SELECT), the
//!   `Distributed` `v`, and a view `v_mv` per node `TO v`; `POPULATE` becomes a backfill.
//! - A backfill `INSERT INTO t SELECT … FROM s` runs once, through the `Distributed` tables:
//!   every shard is read once and every row is written once, to the shard its key names.
//! - `DROP TABLE IF EXISTS x` drops whatever the rewrite made of `x`, on every node.
//! - `ALTER TABLE t …` changes `t_local` on every node (a mutation runs once per shard); after
//!   a column change `t` is dropped and made again from `t_local` (18.16 cannot `ALTER` a
//!   `Distributed` table `ON CLUSTER` when the shards are replicated).
//! - `RENAME TABLE a TO b, …` renames the `_local` tables on every node, then drops and makes
//!   again the `Distributed` tables of every name involved, over the renamed local tables.
//! - `CREATE VIEW` (a plain view) is created on every node.
//!
//! Every table name is written with the database (`` `db`.`t` ``), so a statement means the
//! same on every node whatever its default database. Anything else is refused with the
//! statement named, so a migration the rewrite cannot express fails in the unit test that
//! rewrites every migration, not on a customer's cluster.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::clickhouse::ClusterName;

/// Suffix of the node-local (replicated) table behind a `Distributed` one.
pub const LOCAL_SUFFIX: &str = "_local";
/// Suffix of the per-node view that feeds a former view-with-storage.
const VIEW_SUFFIX: &str = "_mv";

/// A migration statement the cluster rewrite cannot express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DdlError {
    #[error("cannot run on a cluster ({reason}): {statement}")]
    Unsupported { reason: String, statement: String },
}

/// What the rewrite made of a name, so later statements (a `DROP`, an `ALTER`, a view reading
/// it) know which objects stand behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Object {
    /// `x_local` on every node plus the `Distributed` `x`.
    Table,
    /// A materialized view `TO` a table, on every node.
    View,
    /// A former view with its own storage: `x_local`, the `Distributed` `x`, the view `x_mv`.
    ViewTable,
    /// A plain view on every node.
    PlainView,
}

/// Rewrites migration statements, in migration order, for one cluster and database.
pub struct ClusterDdl {
    cluster: ClusterName,
    database: String,
    catalog: HashMap<String, Object>,
    /// The sharding key of every `Distributed` table made, to make it again after a column
    /// change (see [`ClusterDdl::alter`]).
    shard_keys: HashMap<String, String>,
}

impl ClusterDdl {
    pub fn new(cluster: ClusterName, database: &str) -> ClusterDdl {
        ClusterDdl {
            cluster,
            database: database.to_string(),
            catalog: HashMap::new(),
            shard_keys: HashMap::new(),
        }
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.cluster
    }

    /// `CREATE DATABASE` on every node.
    pub fn create_database(&self) -> String {
        format!(
            "CREATE DATABASE IF NOT EXISTS {} ON CLUSTER {}",
            quote_ident(&self.database),
            self.cluster
        )
    }

    /// The statements that do on the cluster what `statement` does on one node. Statements
    /// must be fed in migration order (including those applied long ago): a `DROP` or `ALTER`
    /// is rewritten from what the earlier `CREATE` made.
    pub fn rewrite(&mut self, statement: &str) -> Result<Vec<String>, DdlError> {
        let stmt = Statement::parse(statement)?;
        let unsupported = |reason: &str| stmt.unsupported(reason);
        if stmt.keywords(0, &["CREATE", "TABLE"]) {
            self.create_table(&stmt)
        } else if stmt.keywords(0, &["CREATE", "MATERIALIZED", "VIEW"]) {
            self.create_materialized_view(&stmt)
        } else if stmt.keywords(0, &["CREATE", "VIEW"]) {
            self.create_view(&stmt)
        } else if stmt.keywords(0, &["INSERT", "INTO"]) {
            self.insert_select(&stmt)
        } else if stmt.keywords(0, &["DROP", "TABLE"]) || stmt.keywords(0, &["DROP", "VIEW"]) {
            self.drop(&stmt)
        } else if stmt.keywords(0, &["ALTER", "TABLE"]) {
            self.alter(&stmt)
        } else if stmt.keywords(0, &["RENAME", "TABLE"]) {
            self.rename(&stmt)
        } else {
            Err(unsupported("only CREATE TABLE / VIEW / MATERIALIZED VIEW, INSERT … SELECT, DROP TABLE, ALTER TABLE and RENAME TABLE are rewritten"))
        }
    }

    fn qualified(&self, name: &str) -> String {
        format!("{}.{}", quote_ident(&self.database), quote_ident(name))
    }

    fn on_cluster(&self) -> String {
        format!("ON CLUSTER {}", self.cluster)
    }

    fn create_table(&mut self, stmt: &Statement) -> Result<Vec<String>, DdlError> {
        let (if_not_exists, at) = stmt.if_clause(2, &["IF", "NOT", "EXISTS"]);
        let (name, at) = stmt.name(at)?;
        check_name(stmt, &name)?;
        if !stmt.is_punct(at, '(') {
            return Err(stmt.unsupported("a table must list its columns"));
        }
        let close = stmt.matching(at)?;
        let columns = stmt.slice(at, close + 1);
        let engine = Engine::parse(stmt, close + 1)?;
        let local = format!("{name}{LOCAL_SUFFIX}");
        let out = vec![
            format!(
                "CREATE TABLE {if_not_exists}{} {} {columns} ENGINE = {}{}",
                self.qualified(&local),
                self.on_cluster(),
                engine.replicated(&self.database, &local),
                engine.rest_text(stmt),
            ),
            self.distributed(if_not_exists, &name, &engine.shard_key(stmt)?),
        ];
        self.catalog.insert(name, Object::Table);
        Ok(out)
    }

    /// `CREATE TABLE name AS name_local ENGINE = Distributed(…)`, its sharding key remembered.
    fn distributed(&mut self, if_not_exists: &str, name: &str, shard_key: &str) -> String {
        self.shard_keys
            .insert(name.to_string(), shard_key.to_string());
        let local = format!("{name}{LOCAL_SUFFIX}");
        format!(
            "CREATE TABLE {if_not_exists}{} {} AS {} ENGINE = Distributed({}, {}, {}, {shard_key})",
            self.qualified(name),
            self.on_cluster(),
            self.qualified(&local),
            self.cluster,
            quote_literal(&self.database),
            quote_literal(&local),
        )
    }

    fn create_materialized_view(&mut self, stmt: &Statement) -> Result<Vec<String>, DdlError> {
        let (if_not_exists, at) = stmt.if_clause(3, &["IF", "NOT", "EXISTS"]);
        let (name, at) = stmt.name(at)?;
        check_name(stmt, &name)?;
        let as_at = stmt
            .find_top(at, &["AS"])
            .ok_or_else(|| stmt.unsupported("a view needs AS SELECT"))?;
        if stmt.keywords(at, &["TO"]) {
            let (target, after) = stmt.name(at + 1)?;
            if after != as_at {
                return Err(stmt.unsupported("unexpected text between TO and AS"));
            }
            self.known(stmt, &target)?;
            let select = self.select(stmt, as_at + 1, Source::Local)?;
            self.catalog.insert(name.clone(), Object::View);
            return Ok(vec![format!(
                "CREATE MATERIALIZED VIEW {if_not_exists}{} {} TO {} AS {select}",
                self.qualified(&name),
                self.on_cluster(),
                self.qualified(&target),
            )]);
        }
        if !stmt.keywords(at, &["ENGINE"]) {
            return Err(stmt.unsupported("a materialized view needs TO or ENGINE"));
        }
        let populate = stmt.keywords(as_at - 1, &["POPULATE"]);
        let engine_end = if populate { as_at - 1 } else { as_at };
        let engine = Engine::parse_until(stmt, at, engine_end)?;
        let local = format!("{name}{LOCAL_SUFFIX}");
        let view = format!("{name}{VIEW_SUFFIX}");
        if self.catalog.contains_key(&view) {
            return Err(stmt.unsupported(&format!("the name {view} is taken")));
        }
        let local_select = self.select(stmt, as_at + 1, Source::Local)?;
        let mut out = vec![
            // The structure comes from the SELECT, as for the view on one node; `WHERE 0`
            // copies no rows.
            format!(
                "CREATE TABLE {if_not_exists}{} {} ENGINE = {}{} AS SELECT * FROM ({local_select}) WHERE 0",
                self.qualified(&local),
                self.on_cluster(),
                engine.replicated(&self.database, &local),
                engine.rest_text(stmt),
            ),
            self.distributed(if_not_exists, &name, &engine.shard_key(stmt)?),
            format!(
                "CREATE MATERIALIZED VIEW {if_not_exists}{} {} TO {} AS {local_select}",
                self.qualified(&view),
                self.on_cluster(),
                self.qualified(&name),
            ),
        ];
        if populate {
            // After the view exists, like POPULATE: rows inserted in between are counted by
            // both, which only a view that may over-count can tolerate (as with POPULATE).
            out.push(format!(
                "INSERT INTO {} {}",
                self.qualified(&name),
                self.select(stmt, as_at + 1, Source::Distributed)?
            ));
        }
        self.catalog.insert(name, Object::ViewTable);
        Ok(out)
    }

    fn create_view(&mut self, stmt: &Statement) -> Result<Vec<String>, DdlError> {
        let (if_not_exists, at) = stmt.if_clause(2, &["IF", "NOT", "EXISTS"]);
        let (name, at) = stmt.name(at)?;
        check_name(stmt, &name)?;
        if !stmt.keywords(at, &["AS"]) {
            return Err(stmt.unsupported("a view needs AS SELECT"));
        }
        let select = self.select(stmt, at + 1, Source::Distributed)?;
        self.catalog.insert(name.clone(), Object::PlainView);
        Ok(vec![format!(
            "CREATE VIEW {if_not_exists}{} {} AS {select}",
            self.qualified(&name),
            self.on_cluster()
        )])
    }

    fn insert_select(&mut self, stmt: &Statement) -> Result<Vec<String>, DdlError> {
        let (target, mut at) = stmt.name(2)?;
        self.known(stmt, &target)?;
        let mut columns = String::new();
        if stmt.is_punct(at, '(') {
            let close = stmt.matching(at)?;
            columns = format!(" {}", stmt.slice(at, close + 1));
            at = close + 1;
        }
        if !stmt.keywords(at, &["SELECT"]) && !stmt.keywords(at, &["WITH"]) {
            return Err(stmt.unsupported("only INSERT … SELECT (a backfill) is rewritten"));
        }
        Ok(vec![format!(
            "INSERT INTO {}{columns} {}",
            self.qualified(&target),
            self.select(stmt, at, Source::Distributed)?
        )])
    }

    fn drop(&mut self, stmt: &Statement) -> Result<Vec<String>, DdlError> {
        let (if_exists, at) = stmt.if_clause(2, &["IF", "EXISTS"]);
        let (name, at) = stmt.name(at)?;
        if at != stmt.len() {
            return Err(stmt.unsupported("unexpected text after the name"));
        }
        let local = format!("{name}{LOCAL_SUFFIX}");
        let view = format!("{name}{VIEW_SUFFIX}");
        self.shard_keys.remove(&name);
        let objects: Vec<&str> = match self.catalog.remove(&name) {
            Some(Object::View | Object::PlainView) => vec![&name],
            Some(Object::ViewTable) => vec![&view, &name, &local],
            // Not made by a migration: whichever of the two exists.
            Some(Object::Table) | None => vec![&name, &local],
        };
        Ok(objects
            .into_iter()
            .map(|o| {
                format!(
                    "DROP TABLE {if_exists}{} {}",
                    self.qualified(o),
                    self.on_cluster()
                )
            })
            .collect())
    }

    fn alter(&mut self, stmt: &Statement) -> Result<Vec<String>, DdlError> {
        let (name, at) = stmt.name(2)?;
        match self.catalog.get(&name) {
            Some(Object::Table | Object::ViewTable) => {}
            _ => {
                return Err(stmt.unsupported(&format!("{name} is not a table made by a migration")))
            }
        }
        let commands = stmt.split_top_commas(at, stmt.len());
        if commands.is_empty() {
            return Err(stmt.unsupported("ALTER without a command"));
        }
        let changes_columns = commands.iter().any(|&(from, _)| {
            ["ADD", "DROP", "MODIFY", "RENAME", "COMMENT"]
                .iter()
                .any(|&verb| stmt.keywords(from, &[verb, "COLUMN"]))
        });
        let mut out = vec![format!(
            "ALTER TABLE {} {} {}",
            self.qualified(&format!("{name}{LOCAL_SUFFIX}")),
            self.on_cluster(),
            stmt.slice(at, stmt.len())
        )];
        if changes_columns {
            // The Distributed table must show the new columns too. ClickHouse 18.16 refuses an
            // `ALTER … ON CLUSTER` of a Distributed table on a cluster whose shards are
            // replicated, so it is made again from the altered local table instead: it holds no
            // rows (inserts through it are synchronous), and in the moment it is missing an
            // insert fails and is retried by its sender, a read fails and is retried by its
            // caller.
            let shard_key = self
                .shard_keys
                .get(&name)
                .cloned()
                .ok_or_else(|| stmt.unsupported(&format!("{name} has no Distributed table")))?;
            out.push(format!(
                "DROP TABLE IF EXISTS {} {}",
                self.qualified(&name),
                self.on_cluster()
            ));
            out.push(self.distributed("IF NOT EXISTS ", &name, &shard_key));
        }
        Ok(out)
    }

    /// `RENAME TABLE a TO b[, …]` of tables: the node-local tables are renamed on every node, in
    /// one statement as written; then the `Distributed` tables of every name involved are
    /// dropped and made again over the renamed local ones (a `Distributed` table names its
    /// local table, which the rename moved). In that moment reads and inserts of those tables
    /// fail and are retried by their callers, as after an `ADD COLUMN` ([`ClusterDdl::alter`]).
    /// The replicated tables keep their ZooKeeper paths, which name them as they were created.
    fn rename(&mut self, stmt: &Statement) -> Result<Vec<String>, DdlError> {
        let mut renames = Vec::new();
        let mut at = 2;
        loop {
            let (from, after) = stmt.name(at)?;
            if !stmt.keywords(after, &["TO"]) {
                return Err(stmt.unsupported("expected RENAME TABLE a TO b"));
            }
            let (to, after) = stmt.name(after + 1)?;
            check_name(stmt, &to)?;
            renames.push((from, to));
            if after == stmt.len() {
                break;
            }
            if !stmt.is_punct(after, ',') {
                return Err(stmt.unsupported("unexpected text after a rename"));
            }
            at = after + 1;
        }
        let mut involved: Vec<String> = Vec::new();
        for (from, to) in &renames {
            match self.catalog.get(from) {
                Some(Object::Table) => {}
                _ => {
                    return Err(stmt.unsupported(&format!(
                        "{from} is not a table made by a migration (only tables are renamed)"
                    )))
                }
            }
            if self.catalog.contains_key(to) {
                return Err(stmt.unsupported(&format!("the name {to} is taken")));
            }
            let object = self.catalog.remove(from).expect("checked above");
            self.catalog.insert(to.clone(), object);
            if let Some(key) = self.shard_keys.remove(from) {
                self.shard_keys.insert(to.clone(), key);
            }
            for name in [from, to] {
                if !involved.contains(name) {
                    involved.push(name.clone());
                }
            }
        }
        let locals: Vec<String> = renames
            .iter()
            .map(|(from, to)| {
                format!(
                    "{} TO {}",
                    self.qualified(&format!("{from}{LOCAL_SUFFIX}")),
                    self.qualified(&format!("{to}{LOCAL_SUFFIX}"))
                )
            })
            .collect();
        let mut out = vec![format!(
            "RENAME TABLE {} {}",
            locals.join(", "),
            self.on_cluster()
        )];
        for name in &involved {
            out.push(format!(
                "DROP TABLE IF EXISTS {} {}",
                self.qualified(name),
                self.on_cluster()
            ));
        }
        for name in &involved {
            if let Some(key) = self.shard_keys.get(name).cloned() {
                out.push(self.distributed("IF NOT EXISTS ", name, &key));
            }
        }
        Ok(out)
    }

    fn known(&self, stmt: &Statement, name: &str) -> Result<(), DdlError> {
        if self.catalog.contains_key(name) {
            Ok(())
        } else {
            Err(stmt.unsupported(&format!("{name} was not created by an earlier migration")))
        }
    }

    /// The SELECT starting at token `from` (to the end), every table it reads qualified with
    /// the database; with [`Source::Local`] the first table read (the one a materialized view
    /// fires on) is the node-local one.
    fn select(&self, stmt: &Statement, from: usize, source: Source) -> Result<String, DdlError> {
        if from >= stmt.len() {
            return Err(stmt.unsupported("expected a SELECT"));
        }
        // Tokens naming a table: after FROM or JOIN (not ARRAY JOIN), not `db.t` or `f(…)`.
        let tables: Vec<usize> = (from + 1..stmt.len())
            .filter(|&i| {
                (stmt.keywords(i - 1, &["FROM"])
                    || (stmt.keywords(i - 1, &["JOIN"])
                        && !stmt.keywords(i.saturating_sub(2), &["ARRAY"])))
                    && matches!(stmt.tokens[i].kind, Kind::Word | Kind::Quoted)
                    && !stmt.is_punct(i + 1, '.')
                    && !stmt.is_punct(i + 1, '(')
            })
            .collect();
        // A materialized view fires on the table of its outermost FROM.
        let trigger = tables.iter().copied().min_by_key(|&i| stmt.tokens[i].depth);
        if source == Source::Local && trigger.is_none() {
            return Err(stmt.unsupported("a materialized view must read FROM a table"));
        }
        let mut out = String::new();
        let mut copied = stmt.tokens[from].start;
        for i in tables {
            let name = stmt.ident(i);
            self.known(stmt, &name)?;
            let table = match (source, Some(i) == trigger, self.catalog.get(&name)) {
                (Source::Local, true, Some(Object::Table | Object::ViewTable)) => {
                    format!("{name}{LOCAL_SUFFIX}")
                }
                (Source::Local, true, _) => {
                    return Err(stmt.unsupported(&format!(
                        "a materialized view must read a table, and {name} is a view"
                    )))
                }
                _ => name,
            };
            out.push_str(&stmt.sql[copied..stmt.tokens[i].start]);
            out.push_str(&self.qualified(&table));
            copied = stmt.tokens[i].end;
        }
        out.push_str(&stmt.sql[copied..]);
        Ok(out)
    }
}

/// Which table a SELECT's first `FROM` means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The node-local one (a materialized view fires on the inserts of its node).
    Local,
    /// The Distributed one (reads every shard).
    Distributed,
}

fn check_name(stmt: &Statement, name: &str) -> Result<(), DdlError> {
    if name.ends_with(LOCAL_SUFFIX) {
        return Err(stmt.unsupported(&format!(
            "names ending in {LOCAL_SUFFIX} are kept for the node-local tables"
        )));
    }
    Ok(())
}

/// `` `name` `` with backquotes and backslashes escaped.
fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// `'text'` with quotes and backslashes escaped.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// An `ENGINE = Name[(args)] rest` clause of a table or a view with storage.
struct Engine {
    name: String,
    /// Text inside the parentheses; empty when there are none.
    args: String,
    /// Tokens after the engine (PARTITION BY, ORDER BY, SETTINGS, …), as a range.
    rest: (usize, usize),
}

impl Engine {
    /// The clause from token `at` (`ENGINE`) to the end of the statement.
    fn parse(stmt: &Statement, at: usize) -> Result<Engine, DdlError> {
        Engine::parse_until(stmt, at, stmt.len())
    }

    fn parse_until(stmt: &Statement, at: usize, end: usize) -> Result<Engine, DdlError> {
        if !stmt.keywords(at, &["ENGINE"]) || !stmt.is_punct(at + 1, '=') || at + 2 >= end {
            return Err(stmt.unsupported("expected ENGINE = …"));
        }
        let name = stmt.ident(at + 2);
        if !name.ends_with("MergeTree") || name.starts_with("Replicated") {
            return Err(stmt.unsupported(&format!(
                "engine {name} cannot be replicated: use a MergeTree engine"
            )));
        }
        let (args, rest_from) = if stmt.is_punct(at + 3, '(') {
            let close = stmt.matching(at + 3)?;
            (stmt.slice_inside(at + 3, close).to_string(), close + 1)
        } else {
            (String::new(), at + 3)
        };
        if stmt
            .find_top_between(rest_from, end, &["ORDER", "BY"])
            .is_none()
        {
            return Err(stmt.unsupported("a MergeTree table needs ORDER BY"));
        }
        Ok(Engine {
            name,
            args,
            rest: (rest_from, end),
        })
    }

    /// `ReplicatedXMergeTree('<zookeeper path>', '{replica}'[, args])`; the path has the shard
    /// and the database, so replicas of one shard share it and nothing else does.
    fn replicated(&self, database: &str, local: &str) -> String {
        let path = format!("/clickhouse/tables/{{shard}}/{database}/{local}");
        let mut engine = format!(
            "Replicated{}({}, '{{replica}}'",
            self.name,
            quote_literal(&path)
        );
        if !self.args.trim().is_empty() {
            let _ = write!(engine, ", {}", self.args.trim());
        }
        engine.push(')');
        engine
    }

    /// The clauses after the engine, with a leading space.
    fn rest_text(&self, stmt: &Statement) -> String {
        let (from, to) = self.rest;
        if from >= to {
            String::new()
        } else {
            format!(" {}", stmt.slice(from, to))
        }
    }

    /// `cityHash64(toString(a), toString(b))` of the first two sorting-key columns (`rand()`
    /// for a table without a key).
    fn shard_key(&self, stmt: &Statement) -> Result<String, DdlError> {
        let (from, to) = self.rest;
        let order = stmt
            .find_top_between(from, to, &["ORDER", "BY"])
            .ok_or_else(|| stmt.unsupported("a MergeTree table needs ORDER BY"))?
            + 2;
        let end = (order..to)
            .find(|&i| {
                stmt.tokens[i].depth == 0
                    && ["PARTITION", "PRIMARY", "SAMPLE", "SETTINGS", "TTL"]
                        .iter()
                        .any(|kw| stmt.keywords(i, &[kw]))
            })
            .unwrap_or(to);
        let columns: Vec<&str> = if stmt.is_punct(order, '(') && stmt.matching(order)? + 1 == end {
            stmt.split_top_commas_inside(order)?
        } else if stmt.keywords(order, &["tuple"]) && end == order + 3 {
            Vec::new()
        } else {
            vec![stmt.slice(order, end)]
        };
        if columns.is_empty() {
            return Ok("rand()".into());
        }
        let hashed: Vec<String> = columns
            .iter()
            .take(2)
            .map(|c| format!("toString({})", c.trim()))
            .collect();
        Ok(format!("cityHash64({})", hashed.join(", ")))
    }
}

// ---------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Keyword, identifier or number.
    Word,
    /// `` `identifier` `` or `"identifier"`.
    Quoted,
    /// `'string'`.
    Literal,
    Punct,
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
    /// Parenthesis depth: of the enclosing text for `(` and `)` themselves.
    depth: u32,
}

/// One statement, split into tokens (comments and white space dropped) that point back into
/// its text, so rewritten statements copy everything they do not change verbatim.
struct Statement<'a> {
    sql: &'a str,
    tokens: Vec<Token>,
}

impl<'a> Statement<'a> {
    fn parse(sql: &'a str) -> Result<Statement<'a>, DdlError> {
        let sql = sql.trim().trim_end_matches(';').trim_end();
        let bytes = sql.as_bytes();
        let unsupported = |reason: &str| DdlError::Unsupported {
            reason: reason.to_string(),
            statement: sql.to_string(),
        };
        let mut tokens = Vec::new();
        let mut depth: u32 = 0;
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            let start = i;
            let kind = match c {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    i += 1;
                    continue;
                }
                b'-' if bytes.get(i + 1) == Some(&b'-') => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                    continue;
                }
                b'/' if bytes.get(i + 1) == Some(&b'*') => {
                    let end = sql[i + 2..]
                        .find("*/")
                        .ok_or_else(|| unsupported("unterminated comment"))?;
                    i += 2 + end + 2;
                    continue;
                }
                b'\'' | b'`' | b'"' => {
                    i += 1;
                    loop {
                        match bytes.get(i) {
                            None => return Err(unsupported("unterminated quote")),
                            Some(b'\\') => i += 2,
                            Some(&q) if q == c => {
                                // A doubled quote is an escaped quote.
                                if bytes.get(i + 1) == Some(&c) {
                                    i += 2;
                                } else {
                                    i += 1;
                                    break;
                                }
                            }
                            Some(_) => i += 1,
                        }
                    }
                    if c == b'\'' {
                        Kind::Literal
                    } else {
                        Kind::Quoted
                    }
                }
                c if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 => {
                    while i < bytes.len()
                        && (bytes[i].is_ascii_alphanumeric()
                            || bytes[i] == b'_'
                            || bytes[i] >= 0x80)
                    {
                        i += 1;
                    }
                    Kind::Word
                }
                _ => {
                    i += 1;
                    Kind::Punct
                }
            };
            let token_depth = match (kind, c) {
                (Kind::Punct, b'(') => {
                    depth += 1;
                    depth - 1
                }
                (Kind::Punct, b')') => {
                    depth = depth
                        .checked_sub(1)
                        .ok_or_else(|| unsupported("unbalanced parentheses"))?;
                    depth
                }
                _ => depth,
            };
            tokens.push(Token {
                kind,
                start,
                end: i,
                depth: token_depth,
            });
        }
        if depth != 0 {
            return Err(unsupported("unbalanced parentheses"));
        }
        Ok(Statement { sql, tokens })
    }

    fn unsupported(&self, reason: &str) -> DdlError {
        DdlError::Unsupported {
            reason: reason.to_string(),
            statement: self.sql.to_string(),
        }
    }

    fn len(&self) -> usize {
        self.tokens.len()
    }

    fn text(&self, i: usize) -> &'a str {
        self.tokens.get(i).map_or("", |t| &self.sql[t.start..t.end])
    }

    /// Whether the tokens from `at` are these keywords (case-insensitive).
    fn keywords(&self, at: usize, words: &[&str]) -> bool {
        words.iter().enumerate().all(|(k, w)| {
            self.tokens
                .get(at + k)
                .is_some_and(|t| t.kind == Kind::Word && self.text(at + k).eq_ignore_ascii_case(w))
        })
    }

    fn is_punct(&self, at: usize, c: char) -> bool {
        self.tokens
            .get(at)
            .is_some_and(|t| t.kind == Kind::Punct && self.text(at).starts_with(c))
    }

    /// `(IF NOT EXISTS ` or `IF EXISTS `, if present at `at`, and the index after it.
    fn if_clause(&self, at: usize, words: &[&str]) -> (&'static str, usize) {
        match (self.keywords(at, words), words.len()) {
            (true, 3) => ("IF NOT EXISTS ", at + 3),
            (true, _) => ("IF EXISTS ", at + words.len()),
            (false, _) => ("", at),
        }
    }

    /// An identifier's name without quotes.
    fn ident(&self, at: usize) -> String {
        let text = self.text(at);
        match self.tokens[at].kind {
            Kind::Quoted => {
                let q = &text[..1];
                text[1..text.len() - 1]
                    .replace(&format!("{q}{q}"), q)
                    .replace(&format!("\\{q}"), q)
                    .replace("\\\\", "\\")
            }
            _ => text.to_string(),
        }
    }

    /// A table name at `at` (unqualified: migrations use the client's database) and the index
    /// after it.
    fn name(&self, at: usize) -> Result<(String, usize), DdlError> {
        match self.tokens.get(at) {
            Some(t) if matches!(t.kind, Kind::Word | Kind::Quoted) => {
                if self.is_punct(at + 1, '.') {
                    return Err(self.unsupported("migrations name tables without a database"));
                }
                Ok((self.ident(at), at + 1))
            }
            _ => Err(self.unsupported("expected a table name")),
        }
    }

    /// Index of the `)` closing the `(` at `open`.
    fn matching(&self, open: usize) -> Result<usize, DdlError> {
        let depth = self.tokens[open].depth;
        (open + 1..self.len())
            .find(|&i| self.is_punct(i, ')') && self.tokens[i].depth == depth)
            .ok_or_else(|| self.unsupported("unbalanced parentheses"))
    }

    /// The original text of tokens `from..to`.
    fn slice(&self, from: usize, to: usize) -> &'a str {
        if from >= to {
            return "";
        }
        &self.sql[self.tokens[from].start..self.tokens[to - 1].end]
    }

    /// The text between the parentheses at `open` and `close`.
    fn slice_inside(&self, open: usize, close: usize) -> &'a str {
        &self.sql[self.tokens[open].end..self.tokens[close].start]
    }

    /// First index ≥ `from` where `words` start at parenthesis depth 0.
    fn find_top(&self, from: usize, words: &[&str]) -> Option<usize> {
        self.find_top_between(from, self.len(), words)
    }

    fn find_top_between(&self, from: usize, to: usize, words: &[&str]) -> Option<usize> {
        (from..to).find(|&i| self.tokens[i].depth == 0 && self.keywords(i, words))
    }

    /// Token ranges of the depth-0 comma-separated parts of `from..to`.
    fn split_top_commas(&self, from: usize, to: usize) -> Vec<(usize, usize)> {
        let mut parts = Vec::new();
        let mut start = from;
        for i in from..to {
            if self.is_punct(i, ',') && self.tokens[i].depth == 0 {
                parts.push((start, i));
                start = i + 1;
            }
        }
        if start < to {
            parts.push((start, to));
        }
        parts
    }

    /// The comma-separated parts inside the parentheses at `open`, as text.
    fn split_top_commas_inside(&self, open: usize) -> Result<Vec<&'a str>, DdlError> {
        let close = self.matching(open)?;
        let depth = self.tokens[open].depth + 1;
        let mut parts = Vec::new();
        let mut start = open + 1;
        for i in open + 1..=close {
            if i == close || (self.is_punct(i, ',') && self.tokens[i].depth == depth) {
                if start < i {
                    parts.push(self.slice(start, i));
                }
                start = i + 1;
            }
        }
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::migrations::{statements, BASELINE_SQL, BASELINE_VERSION, MIGRATIONS};

    fn ddl() -> ClusterDdl {
        ClusterDdl::new("backlight".parse().unwrap(), "bl")
    }

    fn one(ddl: &mut ClusterDdl, sql: &str) -> Vec<String> {
        ddl.rewrite(sql)
            .unwrap_or_else(|e| panic!("rewriting {sql:?}: {e}"))
    }

    #[test]
    fn a_table_becomes_replicated_local_tables_and_a_distributed_one() {
        let out = one(
            &mut ddl(),
            "CREATE TABLE IF NOT EXISTS events (\n  tenant_id String, -- who\n  device_id UUID,\n  seq UInt64,\n  received_ms UInt64\n) ENGINE = ReplacingMergeTree(received_ms)\nPARTITION BY toYYYYMM(event_date)\nORDER BY (tenant_id, device_id, seq)",
        );
        assert_eq!(
            out,
            vec![
                "CREATE TABLE IF NOT EXISTS `bl`.`events_local` ON CLUSTER backlight (\n  tenant_id String, -- who\n  device_id UUID,\n  seq UInt64,\n  received_ms UInt64\n) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/bl/events_local', '{replica}', received_ms) PARTITION BY toYYYYMM(event_date)\nORDER BY (tenant_id, device_id, seq)",
                "CREATE TABLE IF NOT EXISTS `bl`.`events` ON CLUSTER backlight AS `bl`.`events_local` ENGINE = Distributed(backlight, 'bl', 'events_local', cityHash64(toString(tenant_id), toString(device_id)))",
            ]
        );
    }

    #[test]
    fn engines_without_arguments_keys_of_one_column_and_settings() {
        let out = one(
            &mut ddl(),
            "CREATE TABLE IF NOT EXISTS self_test (probe String, at_ms UInt64) ENGINE = MergeTree ORDER BY probe SETTINGS index_granularity = 256",
        );
        assert!(out[0].contains("ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/bl/self_test_local', '{replica}') ORDER BY probe SETTINGS index_granularity = 256"), "{}", out[0]);
        assert!(
            out[1].ends_with("cityHash64(toString(probe)))"),
            "{}",
            out[1]
        );
        let out = one(
            &mut ddl(),
            "CREATE TABLE t (a String) ENGINE = MergeTree ORDER BY tuple()",
        );
        assert!(out[1].ends_with("rand())"), "{}", out[1]);
        assert!(
            out[0].starts_with("CREATE TABLE `bl`.`t_local`"),
            "no IF NOT EXISTS added: {}",
            out[0]
        );
    }

    #[test]
    fn a_view_to_a_table_reads_the_local_table_and_writes_the_distributed_one() {
        let mut ddl = ddl();
        one(&mut ddl, "CREATE TABLE IF NOT EXISTS events (item_id String) ENGINE = MergeTree ORDER BY item_id");
        one(
            &mut ddl,
            "CREATE TABLE IF NOT EXISTS items (item_id String) ENGINE = MergeTree ORDER BY item_id",
        );
        let out = one(
            &mut ddl,
            "CREATE MATERIALIZED VIEW IF NOT EXISTS items_mv TO items AS\nSELECT item_id FROM events WHERE item_id != '' AND item_id NOT IN (SELECT item_id FROM items)",
        );
        assert_eq!(
            out,
            vec!["CREATE MATERIALIZED VIEW IF NOT EXISTS `bl`.`items_mv` ON CLUSTER backlight TO `bl`.`items` AS SELECT item_id FROM `bl`.`events_local` WHERE item_id != '' AND item_id NOT IN (SELECT item_id FROM `bl`.`items`)"]
        );
        // A backfill reads and writes the Distributed tables.
        let out = one(&mut ddl, "INSERT INTO items\nSELECT item_id FROM events");
        assert_eq!(
            out,
            vec!["INSERT INTO `bl`.`items` SELECT item_id FROM `bl`.`events`"]
        );
        // Dropping the view drops it on every node.
        assert_eq!(
            one(&mut ddl, "DROP TABLE IF EXISTS items_mv"),
            vec!["DROP TABLE IF EXISTS `bl`.`items_mv` ON CLUSTER backlight"]
        );
        assert_eq!(
            one(&mut ddl, "DROP TABLE IF EXISTS items"),
            vec![
                "DROP TABLE IF EXISTS `bl`.`items` ON CLUSTER backlight",
                "DROP TABLE IF EXISTS `bl`.`items_local` ON CLUSTER backlight"
            ]
        );
    }

    #[test]
    fn a_view_with_storage_becomes_a_table_a_distributed_table_and_a_view() {
        let mut ddl = ddl();
        one(&mut ddl, "CREATE TABLE IF NOT EXISTS events (tenant_id String, device_id UUID) ENGINE = MergeTree ORDER BY (tenant_id, device_id)");
        let out = one(
            &mut ddl,
            "CREATE MATERIALIZED VIEW IF NOT EXISTS day_rows\nENGINE = SummingMergeTree(rows)\nORDER BY (tenant_id, device_id)\nPOPULATE AS\nSELECT tenant_id, device_id, toUInt64(count()) AS rows FROM events GROUP BY tenant_id, device_id",
        );
        let select = "SELECT tenant_id, device_id, toUInt64(count()) AS rows FROM";
        let group = "GROUP BY tenant_id, device_id";
        assert_eq!(
            out,
            vec![
                format!("CREATE TABLE IF NOT EXISTS `bl`.`day_rows_local` ON CLUSTER backlight ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{{shard}}/bl/day_rows_local', '{{replica}}', rows) ORDER BY (tenant_id, device_id) AS SELECT * FROM ({select} `bl`.`events_local` {group}) WHERE 0"),
                "CREATE TABLE IF NOT EXISTS `bl`.`day_rows` ON CLUSTER backlight AS `bl`.`day_rows_local` ENGINE = Distributed(backlight, 'bl', 'day_rows_local', cityHash64(toString(tenant_id), toString(device_id)))".to_string(),
                format!("CREATE MATERIALIZED VIEW IF NOT EXISTS `bl`.`day_rows_mv` ON CLUSTER backlight TO `bl`.`day_rows` AS {select} `bl`.`events_local` {group}"),
                format!("INSERT INTO `bl`.`day_rows` {select} `bl`.`events` {group}"),
            ]
        );
        assert_eq!(
            one(&mut ddl, "DROP TABLE IF EXISTS day_rows"),
            vec![
                "DROP TABLE IF EXISTS `bl`.`day_rows_mv` ON CLUSTER backlight",
                "DROP TABLE IF EXISTS `bl`.`day_rows` ON CLUSTER backlight",
                "DROP TABLE IF EXISTS `bl`.`day_rows_local` ON CLUSTER backlight"
            ]
        );
    }

    #[test]
    fn alters_reach_every_node_and_column_changes_remake_the_distributed_table() {
        let mut ddl = ddl();
        one(&mut ddl, "CREATE TABLE IF NOT EXISTS audit_log (tenant_id String, at_ms UInt64) ENGINE = MergeTree ORDER BY (tenant_id, at_ms)");
        assert_eq!(
            one(&mut ddl, "ALTER TABLE audit_log DELETE WHERE at_ms < 5"),
            vec!["ALTER TABLE `bl`.`audit_log_local` ON CLUSTER backlight DELETE WHERE at_ms < 5"]
        );
        assert_eq!(
            one(&mut ddl, "ALTER TABLE audit_log ADD COLUMN note String DEFAULT 'a, b', MODIFY SETTING index_granularity = 256"),
            vec![
                "ALTER TABLE `bl`.`audit_log_local` ON CLUSTER backlight ADD COLUMN note String DEFAULT 'a, b', MODIFY SETTING index_granularity = 256",
                "DROP TABLE IF EXISTS `bl`.`audit_log` ON CLUSTER backlight",
                "CREATE TABLE IF NOT EXISTS `bl`.`audit_log` ON CLUSTER backlight AS `bl`.`audit_log_local` ENGINE = Distributed(backlight, 'bl', 'audit_log_local', cityHash64(toString(tenant_id), toString(at_ms)))",
            ]
        );
    }

    #[test]
    fn what_cannot_be_expressed_is_refused_with_the_statement() {
        let mut ddl = ddl();
        for (sql, reason) in [
            (
                "CREATE TABLE a (x UInt8) ENGINE = Log",
                "engine Log cannot be replicated",
            ),
            (
                "CREATE TABLE a_local (x UInt8) ENGINE = MergeTree ORDER BY x",
                "names ending in _local",
            ),
            (
                "CREATE TABLE other.a (x UInt8) ENGINE = MergeTree ORDER BY x",
                "without a database",
            ),
            ("INSERT INTO nowhere SELECT 1", "nowhere was not created"),
            (
                "ALTER TABLE nowhere DELETE WHERE 1",
                "not a table made by a migration",
            ),
            ("OPTIMIZE TABLE a FINAL", "only CREATE TABLE"),
            (
                "CREATE TABLE a (x UInt8) ENGINE = MergeTree PARTITION BY x",
                "needs ORDER BY",
            ),
        ] {
            let error = ddl.rewrite(sql).expect_err(sql).to_string();
            assert!(
                error.contains(reason) && error.contains(sql),
                "{sql}: {error}"
            );
        }
    }

    #[test]
    fn quotes_comments_and_parentheses_in_text_are_not_syntax() {
        let mut ddl = ddl();
        one(&mut ddl, "CREATE TABLE IF NOT EXISTS `we``ird` (x String DEFAULT 'ORDER BY (y', /* ) */ y UInt8) ENGINE = MergeTree ORDER BY (x, y)");
        let out = one(
            &mut ddl,
            "INSERT INTO `we``ird` SELECT 'FROM nowhere', 1 FROM `we``ird`",
        );
        assert_eq!(
            out,
            vec![r"INSERT INTO `bl`.`we\`ird` SELECT 'FROM nowhere', 1 FROM `bl`.`we\`ird`"]
        );
    }

    #[test]
    fn a_rename_renames_the_local_tables_and_remakes_the_distributed_ones() {
        let mut ddl = ddl();
        for t in ["r", "r_v2"] {
            one(&mut ddl, &format!("CREATE TABLE IF NOT EXISTS {t} (tenant_id String, day Date) ENGINE = MergeTree ORDER BY (tenant_id, day)"));
        }
        let distributed = |t: &str| {
            format!("CREATE TABLE IF NOT EXISTS `bl`.`{t}` ON CLUSTER backlight AS `bl`.`{t}_local` ENGINE = Distributed(backlight, 'bl', '{t}_local', cityHash64(toString(tenant_id), toString(day)))")
        };
        let drop = |t: &str| format!("DROP TABLE IF EXISTS `bl`.`{t}` ON CLUSTER backlight");
        assert_eq!(
            one(&mut ddl, "RENAME TABLE r_v2 TO r_next, r TO r_unread,\n r_next TO r"),
            vec![
                "RENAME TABLE `bl`.`r_v2_local` TO `bl`.`r_next_local`, `bl`.`r_local` TO `bl`.`r_unread_local`, `bl`.`r_next_local` TO `bl`.`r_local` ON CLUSTER backlight".to_string(),
                drop("r_v2"),
                drop("r_next"),
                drop("r"),
                drop("r_unread"),
                distributed("r"),
                distributed("r_unread"),
            ]
        );
        // Later statements see the new names.
        assert_eq!(
            one(&mut ddl, "DROP TABLE IF EXISTS r_unread"),
            vec![drop("r_unread"), drop("r_unread_local")]
        );
        assert!(ddl.rewrite("INSERT INTO r_v2 SELECT * FROM r").is_err());
        one(&mut ddl, "INSERT INTO r SELECT * FROM r");
        for (sql, reason) in [
            (
                "RENAME TABLE nowhere TO x",
                "not a table made by a migration",
            ),
            ("RENAME TABLE r TO r", "is taken"),
            ("RENAME TABLE r TO x_local", "names ending in _local"),
            ("RENAME TABLE r x", "expected RENAME TABLE a TO b"),
        ] {
            let error = ddl.rewrite(sql).expect_err(sql).to_string();
            assert!(error.contains(reason), "{sql}: {error}");
        }
    }

    /// A new database (the baseline, then the migrations after it) and one upgraded through
    /// every migration know the same objects with the same sharding keys, so later migrations
    /// rewrite alike on both.
    #[test]
    fn the_baseline_and_the_migrations_make_the_same_cluster_objects() {
        let mut fresh = ddl();
        let after_baseline = MIGRATIONS.iter().filter(|m| m.version > BASELINE_VERSION);
        for s in statements(BASELINE_SQL)
            .into_iter()
            .chain(after_baseline.flat_map(|m| statements(m.sql)))
        {
            one(&mut fresh, &s);
        }
        let mut upgraded = ddl();
        for m in MIGRATIONS {
            for s in statements(m.sql) {
                one(&mut upgraded, &s);
            }
        }
        let sorted = |ddl: &ClusterDdl| {
            let mut objects: Vec<_> = ddl
                .catalog
                .iter()
                .map(|(k, v)| (k.clone(), v.clone(), ddl.shard_keys.get(k).cloned()))
                .collect();
            objects.sort_by(|a, b| a.0.cmp(&b.0));
            objects
        };
        assert_eq!(sorted(&fresh), sorted(&upgraded));
    }

    /// Every migration there is, fed in order, rewrites for a cluster: a migration the rewrite
    /// cannot express fails here, not on a customer's cluster.
    #[test]
    fn every_migration_rewrites_for_a_cluster() {
        let mut ddl = ddl();
        let mut tables = 0;
        for m in MIGRATIONS {
            for s in statements(m.sql) {
                let out = ddl
                    .rewrite(&s)
                    .unwrap_or_else(|e| panic!("migration {}: {e}", m.version));
                for o in &out {
                    assert!(
                        o.contains("ON CLUSTER backlight") || o.starts_with("INSERT INTO `bl`."),
                        "migration {}: {o}",
                        m.version
                    );
                    // Every table read or written is named with its database.
                    for word in [" FROM ", " JOIN ", " TO ", "INSERT INTO "] {
                        for (at, _) in o.match_indices(word) {
                            let next = &o[at + word.len()..];
                            assert!(
                                next.starts_with("`bl`.") || next.starts_with('('),
                                "migration {}: unqualified name after {word:?} in {o}",
                                m.version
                            );
                        }
                    }
                }
                tables += out.iter().filter(|o| o.contains("Distributed(")).count();
            }
        }
        assert!(tables >= 10, "{tables} Distributed tables");
    }
}
