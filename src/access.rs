//! Who is acting, and what they may do.
//!
//! The actor is a row of `deal_store.users`. A login role linked to a user
//! (`users.db_role`) *is* that user; `deal_store.actor` may name someone else
//! only for members of `deal_store_service` or `deal_store_admin` (and for
//! superusers): an application's pooled login acting for its users. Anyone
//! else who sets it to another user gets 42501 at the first use.
//!
//! What an operation may touch is decided twice, from one rule table
//! ([`Right`]): the login role must have the privileges of a group role
//! (`deal_store_reader` ... `deal_store_admin`), and the actor must hold a deal
//! role (viewer < analyst < reviewer < lead) in `deal_members` for that deal.
//! Row-level security asks [`my_deals`] once per statement; the API functions
//! (SECURITY DEFINER) ask [`require_right`] before they touch a deal.
//!
//! The lookups run as the extension's owner, so they neither need the caller's
//! grants nor recurse into the policies that call them. Everything is resolved
//! once per transaction and role (the lookups are prepared once per session)
//! and forgotten when the transaction ends, a savepoint rolls back, or `users`
//! or `deal_members` change.
//!
//! A database still at 0.1.0 (the new library is installed, `ALTER EXTENSION
//! UPDATE` has not run) has no `deal_members`: then everyone may do anything,
//! as in 0.1.0, and the actor is `deal_store.actor` as set.
use crate::errors::raise;
use crate::settings;
use crate::shard;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use crate::spi::OwnedPreparedStatement;
use pgrx::{PgOid, Uuid};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::rc::Rc;

/// A member's role in one deal, weakest first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DealRole {
    Viewer,
    Analyst,
    Reviewer,
    Lead,
}

const DEAL_ROLES: [(DealRole, &str); 4] =
    [(DealRole::Viewer, "viewer"), (DealRole::Analyst, "analyst"), (DealRole::Reviewer, "reviewer"), (DealRole::Lead, "lead")];

impl DealRole {
    fn name(self) -> &'static str {
        DEAL_ROLES.iter().find(|(r, _)| *r == self).map(|(_, n)| *n).expect("every role is named")
    }

    fn parse(text: &str) -> Option<DealRole> {
        DEAL_ROLES.iter().find(|(_, n)| *n == text).map(|(r, _)| *r)
    }

    /// The role named by a function's argument: 22023 for an unknown name.
    fn required(text: &str) -> DealRole {
        DealRole::parse(text).unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("unknown deal role \"{text}\""),
                Some("A deal role is viewer, analyst, reviewer or lead.".into()),
            )
        })
    }

    /// This role and every stronger one, by name.
    fn and_above(self) -> Vec<&'static str> {
        DEAL_ROLES.iter().filter(|(r, _)| *r >= self).map(|(_, n)| *n).collect()
    }
}

/// What an operation needs. One table: the group role of the login, the deal
/// role of the actor (None: admins only).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Read,
    Write,
    Review,
    Manage,
    Admin,
}

const RIGHTS: [(Right, &str, &CStr, Option<DealRole>); 5] = [
    (Right::Read, "read", c"deal_store_reader", Some(DealRole::Viewer)),
    (Right::Write, "write", c"deal_store_analyst", Some(DealRole::Analyst)),
    (Right::Review, "review", c"deal_store_reviewer", Some(DealRole::Reviewer)),
    (Right::Manage, "manage", c"deal_store_analyst", Some(DealRole::Lead)),
    (Right::Admin, "administer", c"deal_store_admin", None),
];

impl Right {
    fn row(self) -> &'static (Right, &'static str, &'static CStr, Option<DealRole>) {
        RIGHTS.iter().find(|r| r.0 == self).expect("every right has a row")
    }

    fn parse(text: &str) -> Right {
        RIGHTS.iter().find(|r| r.1 == text).map(|r| r.0).unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("unknown right \"{text}\""),
                Some("A right is read, write, review, manage or administer.".into()),
            )
        })
    }
}

/// The group role whose members administer every deal.
const ADMIN: &CStr = c"deal_store_admin";
/// The group role of applications that act for their users.
const SERVICE: &CStr = c"deal_store_service";

/// The sorted deal lists of one actor, per minimum role and source.
type DealLists = HashMap<(DealRole, Source), Rc<Vec<Uuid>>>;

/// What one role in one transaction is, resolved once.
struct Resolved {
    /// the role outside any SECURITY DEFINER function: the session's, or SET ROLE's
    outer: Oid,
    /// `deal_store.actor` as it was when this was resolved
    raw: Option<CString>,
    /// the access model is installed (0.2.0); false on a 0.1.0 database
    installed: bool,
    /// superuser or member of deal_store_admin: every deal
    admin: bool,
    /// member of deal_store_service (not a superuser): must name an actor
    service: bool,
    /// the owner of the deal_store schema, as whom lookups and the log run
    owner: Oid,
    /// the user the role acts as, or the message of the 42501 that using it raises
    actor: Result<Option<Uuid>, String>,
    /// the deals where the actor holds a minimum deal role, sorted, read once
    /// per source (on a Citus shard: the deals of that shard's node)
    deals: RefCell<DealLists>,
    /// (deal, run) pairs checked for `deal_store.run_id`: is the run one of the deal's
    runs: RefCell<HashMap<(Uuid, Uuid), bool>>,
    /// a Citus coordinator: [`carry`] passes the context on to the workers
    coordinating: bool,
}

thread_local! {
    static RESOLVED: RefCell<Option<Rc<Resolved>>> = const { RefCell::new(None) };
    /// the lookups, prepared once per session and source
    static PLANS: RefCell<HashMap<(Lookup, Source), OwnedPreparedStatement>> = RefCell::new(HashMap::new());
    /// where the lookups read now (see [`Source`])
    static SOURCE: Cell<Source> = const { Cell::new(Source::Tables) };
    /// the last relation a policy asked about, and where its lookups read
    static LAST_RELATION: Cell<Option<(Oid, Source)>> = const { Cell::new(None) };
    /// on a Citus coordinator, what [`carry`] passed on in this transaction
    /// (actor, reason, run; empty: unset, as a transaction starts on a worker);
    /// None after a rolled-back savepoint, which may have undone some of it, and
    /// after a statement that set one of the settings (see [`settings_touched`])
    static CARRIED: RefCell<Option<[String; 3]>> = RefCell::new(Some(Default::default()));
    /// [`carry`] is running: its own SET LOCAL statements are not a session's
    static CARRYING: Cell<bool> = const { Cell::new(false) };
}

/// The catalog and table lookups of this module, each a prepared statement.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Lookup {
    /// the owner of the deal_store schema
    Owner,
    /// the user linked to a login role ($1 name)
    UserOfRole,
    /// a user's ($2) role in a deal ($1)
    RoleInDeal,
    /// the deals where a user ($1) holds one of the roles ($2)
    DealsOf,
    /// a deal ($1) exists
    DealExists,
    /// a run ($2) is a run of a deal ($1)
    RunInDeal,
}

/// Where the lookups read. On plain PostgreSQL and on a Citus coordinator: the
/// tables. Inside a query on a Citus shard (a row-level security policy on a
/// worker) a query on the tables would be planned by Citus again, from inside a
/// query on a shard, and fail: there the lookups read this node's shards, the
/// `users` reference shard and the `deal_members` / `deals` shards co-located
/// with the shard the policy guards (a deal's rows and its team share a node).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Tables,
    /// a shard of a distributed deal table: its id
    Shard(i64),
    /// a shard of a reference table: no deal's team is sure to be on this node
    Reference,
}

impl Source {
    /// The relation the lookups read for `deal_store.<table>`.
    fn relation(self, table: &'static str) -> Rc<str> {
        match (self, table) {
            (Source::Tables, _) => format!("deal_store.{table}").into(),
            (_, "users") => shard::reference_shard(table),
            (Source::Shard(s), _) => shard::colocated(s, table),
            (Source::Reference, _) => raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("deal_store.{table} cannot be read from a shard of a reference table"),
                None,
            ),
        }
    }
}

impl Lookup {
    fn sql(self, from: Source) -> (String, Vec<PgOid>) {
        let (uuid, text, texts) = (pg_sys::UUIDOID, pg_sys::TEXTOID, pg_sys::TEXTARRAYOID);
        let (sql, types): (String, &[Oid]) = match self {
            Lookup::Owner => {
                ("SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) 'deal_store'".into(), &[])
            }
            Lookup::UserOfRole => (
                format!("SELECT u.id FROM {} u WHERE u.db_role OPERATOR(pg_catalog.=) $1::pg_catalog.name", from.relation("users")),
                &[text],
            ),
            Lookup::RoleInDeal => (
                format!(
                    "SELECT m.role FROM {} m WHERE m.deal_id OPERATOR(pg_catalog.=) $1 AND m.user_id OPERATOR(pg_catalog.=) $2",
                    from.relation("deal_members")
                ),
                &[uuid, uuid],
            ),
            Lookup::DealsOf => (
                format!(
                    "SELECT COALESCE(pg_catalog.array_agg(m.deal_id ORDER BY m.deal_id), '{{}}') FROM {} m \
                     WHERE m.user_id OPERATOR(pg_catalog.=) $1 AND m.role OPERATOR(pg_catalog.=) ANY ($2)",
                    from.relation("deal_members")
                ),
                &[uuid, texts],
            ),
            Lookup::DealExists => (format!("SELECT true FROM {} d WHERE d.id OPERATOR(pg_catalog.=) $1", from.relation("deals")), &[uuid]),
            Lookup::RunInDeal => (
                format!(
                    "SELECT true FROM {} r WHERE r.deal_id OPERATOR(pg_catalog.=) $1 AND r.id OPERATOR(pg_catalog.=) $2",
                    from.relation("analysis_runs")
                ),
                &[uuid, uuid],
            ),
        };
        (sql, types.iter().map(|&t| PgOid::from(t)).collect())
    }

    /// The one value the lookup returns (None: no row or NULL), run through its prepared statement.
    fn one<T: FromDatum + IntoDatum>(self, args: &[pgrx::datum::DatumWithOid]) -> Option<T> {
        let from = SOURCE.get();
        crate::spi::connect_mut(|client| {
            PLANS.with(|plans| {
                let mut plans = plans.borrow_mut();
                let plan = plans.entry((self, from)).or_insert_with(|| {
                    let (sql, types) = self.sql(from);
                    let plan = client.prepare_mut(sql.as_str(), &types).map(|p| p.keep());
                    plan.unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None))
                });
                let table = client.update(&*plan, Some(1), args);
                internal(table.and_then(|t| t.first().get_one::<T>()))
            })
        })
    }
}

/// Forgets what was resolved: at transaction end, when a savepoint rolls back,
/// and when `users` or `deal_members` change.
fn forget() {
    RESOLVED.with(|r| r.borrow_mut().take());
}

pub fn init() {
    // SAFETY: plain functions registered once per backend
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(_event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    forget();
    CARRIED.with(|c| *c.borrow_mut() = Some(Default::default()));
}

/// A rolled-back savepoint may have undone a membership this session already read.
#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        forget();
        CARRIED.with(|c| *c.borrow_mut() = None);
    }
}

/// Runs `f` as `owner` (as a SECURITY DEFINER function would): an error inside
/// is rolled back with the (sub)transaction, which also restores the user.
pub fn as_owner<T>(owner: Oid, f: impl FnOnce() -> T) -> T {
    struct Restore(Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the user id and context read below
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let (mut user, mut context) = (Oid::INVALID, 0);
    // SAFETY: reads this backend's user id and security context into locals
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut context) };
    let _restore = Restore(user, context);
    // SAFETY: the same switch fmgr makes for a SECURITY DEFINER function
    unsafe { pg_sys::SetUserIdAndSecContext(owner, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32) };
    f()
}

fn role_oid(name: &CStr) -> Oid {
    // SAFETY: a NUL-terminated name; missing_ok gives InvalidOid
    unsafe { pg_sys::get_role_oid(name.as_ptr(), true) }
}

fn has_privs_of(member: Oid, group: &CStr) -> bool {
    let group = role_oid(group);
    // SAFETY: plain oids; has_privs_of_role reads the role caches
    group != Oid::INVALID && unsafe { pg_sys::has_privs_of_role(member, group) }
}

/// The value of a one-value query: None for no row or NULL.
fn internal<T>(r: Result<Option<T>, crate::spi::Error>) -> Option<T> {
    match r {
        Ok(v) => v,
        Err(crate::spi::Error::InvalidPosition) => None,
        Err(e) => raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string(), None),
    }
}

fn resolve() -> Rc<Resolved> {
    // SAFETY: reads this backend's role state
    let outer = unsafe { pg_sys::GetOuterUserId() };
    let raw = settings::ACTOR.get();
    if let Some(r) = RESOLVED.with(|r| r.borrow().clone()).filter(|r| r.outer == outer && r.raw == raw) {
        return r;
    }
    // SAFETY: plain catalog lookups by name, missing_ok
    let installed = unsafe {
        let schema = pg_sys::get_namespace_oid(c"deal_store".as_ptr(), true);
        schema != Oid::INVALID && pg_sys::get_relname_relid(c"deal_members".as_ptr(), schema) != Oid::INVALID
    };
    // SAFETY: a plain oid
    let superuser = unsafe { pg_sys::superuser_arg(outer) };
    let admin = superuser || has_privs_of(outer, ADMIN);
    let service = !superuser && has_privs_of(outer, SERVICE);
    // SAFETY: the name is copied out before anything else runs
    let name = unsafe {
        let n = pg_sys::GetUserNameFromId(outer, true);
        if n.is_null() {
            String::new()
        } else {
            CStr::from_ptr(n).to_string_lossy().into_owned()
        }
    };
    let owner: Oid = Lookup::Owner.one(&[]).unwrap_or(outer);
    let mapped = if installed { as_owner(owner, || Lookup::UserOfRole.one::<Uuid>(&[name.as_str().into()])) } else { None };
    let set = settings::actor();
    let actor = match set {
        None => Ok(mapped),
        Some(u) if !installed || admin || service || mapped == Some(u) => Ok(Some(u)),
        Some(u) => Err(match mapped {
            Some(m) => format!("role \"{name}\" acts as user {m} and may not set deal_store.actor to {u}"),
            None => format!(
                "role \"{name}\" may not set deal_store.actor: only members of deal_store_service or deal_store_admin act for other users"
            ),
        }),
    };
    crate::operations::check_version_once();
    let coordinating = installed && shard::coordinating();
    let r = Rc::new(Resolved { outer, raw, installed, admin, service, owner, actor, deals: RefCell::default(), runs: RefCell::default(), coordinating });
    RESOLVED.with(|c| *c.borrow_mut() = Some(r.clone()));
    r
}

fn denied(message: String, hint: &str) -> ! {
    crate::errors::raise_hinted(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, message, None, Some(hint.into()))
}

/// The owner of the extension's schema: the log is written as this role.
pub fn owner() -> Oid {
    resolve().owner
}

/// The acting user, None when there is none; 42501 when the role may not act as the user it set.
pub fn actor() -> Option<Uuid> {
    match &resolve().actor {
        Ok(a) => *a,
        Err(m) => denied(m.clone(), "Link the login role to its user (users.db_role), or act through a member of deal_store_service."),
    }
}

/// The run a change of a row of `deal` is logged under when `deal_store.run_id`
/// names `run`: that run, which must be one of the deal's (22023 otherwise). A row
/// of no deal is logged under no run.
pub fn run_of_deal(deal: Option<Uuid>, run: Uuid) -> Option<Uuid> {
    let deal = deal?;
    let r = resolve();
    if !r.installed {
        return Some(run);
    }
    let known = r.runs.borrow().get(&(deal, run)).copied();
    let ok = known.unwrap_or_else(|| {
        let ok = as_owner(r.owner, || Lookup::RunInDeal.one::<bool>(&[deal.into(), run.into()])).unwrap_or(false);
        r.runs.borrow_mut().insert((deal, run), ok);
        ok
    });
    if !ok {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("deal_store.run_id names run {run}, which is not a run of deal {deal}"),
            Some("Set deal_store.run_id to a run of the deal being changed, or leave it empty: the row's own analysis_run_id is logged then.".into()),
        );
    }
    Some(run)
}

/// On a Citus coordinator, who acts and why reach every node: the triggers that
/// write the log and the "who" columns run on the worker that holds the rows,
/// in a session of its own (as the function's owner inside an API function),
/// which knows neither the caller's login nor its settings. So the rights
/// check every API function makes first (and `current_actor()`, which the
/// queue's apply path asks) passes on the actor it resolved, the reason and
/// the run for the rest of the transaction; the worker checks them against
/// its session as this node did. Nothing happens on plain PostgreSQL.
fn carry(r: &Resolved, actor: Option<Uuid>) {
    if !r.coordinating {
        return;
    }
    let text = |s: Option<CString>| s.map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
    let now = [actor.map(|u| u.to_string()).unwrap_or_default(), text(settings::REASON.get()), text(settings::RUN_ID.get())];
    let names = ["deal_store.actor", "deal_store.reason", "deal_store.run_id"];
    let changed: Vec<(&str, String)> = CARRIED.with(|c| match &*c.borrow() {
        Some(was) => names.iter().zip(now.iter()).zip(was.iter()).filter(|((_, v), w)| v != w).map(|((n, v), _)| (*n, v.clone())).collect(),
        None => names.iter().copied().zip(now.iter().cloned()).collect(),
    });
    if changed.is_empty() {
        return;
    }
    CARRYING.set(true);
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            CARRYING.set(false);
        }
    }
    let _done = Done;
    as_owner(r.owner, || shard::carry(&changed));
    CARRIED.with(|c| *c.borrow_mut() = Some(now));
}

/// After a SET of one of deal_store's settings in a transaction block on a
/// Citus coordinator: the actor, reason and run it gives are passed on at once
/// (your own INSERT, UPDATE and DELETE reach the workers without an API call);
/// an actor this role may not name is passed on as none (and refused here at
/// its first use).
pub fn carry_resolved() {
    let r = resolve();
    if !r.coordinating {
        return;
    }
    let actor = r.actor.clone().unwrap_or(None);
    carry(&r, actor);
}

/// A statement set one of deal_store's settings (or reset all): Citus may have
/// passed it on to the workers by itself, also to the connections of API calls,
/// so the next [`carry`] passes on everything again. Its own statements aside.
pub fn settings_touched() {
    if !CARRYING.get() {
        CARRIED.with(|c| *c.borrow_mut() = None);
    }
}

/// The actor of a change: as [`actor`], and 42501 when there is none but one is
/// required (always for deal_store_service, for others with deal_store.require_actor).
pub fn actor_for_write() -> Option<Uuid> {
    let a = actor();
    let r = resolve();
    if a.is_none() && r.installed && (r.service || settings::REQUIRE_ACTOR.get()) {
        denied(
            "a change needs an actor: deal_store.actor is not set".into(),
            "SET LOCAL deal_store.actor = '<user uuid>' in the transaction (required for deal_store_service and under deal_store.require_actor).",
        );
    }
    a
}

/// The actor's role in a deal, None when not a member.
fn deal_role(owner: Oid, deal_id: Uuid, user: Uuid) -> Option<DealRole> {
    let role = as_owner(owner, || Lookup::RoleInDeal.one::<String>(&[deal_id.into(), user.into()]));
    role.as_deref().and_then(DealRole::parse)
}

/// Raises 42501 unless the caller may do what `right` stands for in the deal,
/// and P0002 when the deal does not exist (for a non-member: 42501 either way).
/// On a database still at 0.1.0 (no teams) only the existence is checked.
pub fn require_right(deal_id: Uuid, right: Right) {
    let r = resolve();
    let actor = if right == Right::Read { actor() } else { actor_for_write() };
    carry(&r, actor);
    if !r.installed || r.admin {
        // a member's role implies the deal; without one, look it up
        let exists = as_owner(r.owner, || Lookup::DealExists.one::<bool>(&[deal_id.into()]));
        if exists.is_none() {
            raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("deal {deal_id} does not exist"), None);
        }
        return;
    }
    let &(_, what, group, needed) = right.row();
    let Some(needed) = needed else {
        denied(format!("permission denied to {what} deal {deal_id}"), "Only members of deal_store_admin may.");
    };
    if !has_privs_of(r.outer, group) {
        denied(
            format!("permission denied to {what} deal {deal_id}: the login role is not a member of {}", group.to_string_lossy()),
            "A database administrator grants the deal_store group roles.",
        );
    }
    let Some(actor) = actor else {
        denied(
            format!("permission denied to {what} deal {deal_id}: no actor"),
            "Link the login role to a user (users.db_role), or SET LOCAL deal_store.actor through a member of deal_store_service.",
        );
    };
    let held = deal_role(r.owner, deal_id, actor);
    if held.is_none_or(|h| h < needed) {
        let is = held.map_or("not a member".to_string(), |h| format!("a {}", h.name()));
        denied(
            format!("permission denied to {what} deal {deal_id}: user {actor} is {is}, {} or above needed", needed.name()),
            "A lead of the deal (or an admin) adds members with deal_store.add_member.",
        );
    }
}

/// True when the caller sees every deal: a superuser or a member of deal_store_admin.
#[pg_extern(stable, parallel_safe)]
fn sees_all_deals() -> bool {
    let r = resolve();
    !r.installed || r.admin
}

/// True when the caller (the role outside SECURITY DEFINER functions) administers every deal.
pub fn is_admin() -> bool {
    resolve().admin
}

/// The deals in which the acting user holds `min_role` or a stronger role.
#[pg_extern(stable, parallel_safe)]
fn my_deals(min_role: default!(&str, "'viewer'")) -> Vec<Uuid> {
    let min = DealRole::required(min_role);
    deals_of(min).map(|d| d.to_vec()).unwrap_or_default()
}

/// The deals (sorted) in which the actor holds `min` or a stronger role, read
/// from the current source once per transaction; None without an actor or on
/// a 0.1.0 database (above viewer: 42501 without an actor where one is required).
fn deals_of(min: DealRole) -> Option<Rc<Vec<Uuid>>> {
    let r = resolve();
    // a role above viewer is asked for to change something (the write policies,
    // the worker, a review): a login that needs an actor and has none is told so
    // (42501) rather than finding no rows
    let actor = if min > DealRole::Viewer { actor_for_write() } else { actor() }?;
    if !r.installed {
        return None;
    }
    let key = (min, SOURCE.get());
    let cached = r.deals.borrow().get(&key).cloned();
    Some(cached.unwrap_or_else(|| {
        let read = as_owner(r.owner, || Lookup::DealsOf.one::<Vec<Uuid>>(&[actor.into(), min.and_above().into()]));
        let read = Rc::new(read.unwrap_or_default());
        r.deals.borrow_mut().insert(key, read.clone());
        read
    }))
}

/// Runs `f` with the lookups reading where the rows of relation `rel` live
/// (its shard's node on Citus, the tables otherwise).
fn reading_for<T>(rel: Option<Oid>, f: impl FnOnce() -> T) -> T {
    let rel = rel.unwrap_or(Oid::INVALID);
    let from = match LAST_RELATION.get() {
        Some((last, from)) if last == rel => from,
        _ if rel == Oid::INVALID => Source::Tables,
        _ => {
            let from = match shard::placement_of(rel) {
                Some(shard::Placement { shard: Some(_), reference: true, .. }) => Source::Reference,
                Some(shard::Placement { shard: Some(id), .. }) => Source::Shard(id),
                _ => Source::Tables,
            };
            LAST_RELATION.set(Some((rel, from)));
            from
        }
    };
    struct Restore(Source);
    impl Drop for Restore {
        fn drop(&mut self) {
            SOURCE.set(self.0);
        }
    }
    let _restore = Restore(SOURCE.replace(from));
    f()
}

/// Internal, the row-level security policies on Citus (where a policy may not
/// hold a subquery): true when the caller sees every deal, or its actor holds
/// `min_role` or a stronger role in `deal` (a row's deal column; NULL: no deal,
/// so only those who see every deal pass). `rel` is the policy's relation
/// (`tableoid`): on a worker, the team is read from the `deal_members` shard on
/// the same node, once per transaction. On a shard of a reference table (no
/// team is local) only those who see every deal pass.
#[pg_extern(schema = "deal_store_internal", name = "_may", stable, parallel_safe)]
fn may(rel: Option<Oid>, deal: Option<Uuid>, min_role: Option<&str>) -> bool {
    let min_role = crate::errors::required(min_role, "min_role");
    let min = DealRole::required(min_role);
    reading_for(rel, || {
        let r = resolve();
        if !r.installed || r.admin {
            return true;
        }
        match (deal, SOURCE.get()) {
            (None, _) | (_, Source::Reference) => false,
            (Some(deal), _) => deals_of(min).is_some_and(|d| d.binary_search(&deal).is_ok()),
        }
    })
}

/// Internal, the row-level security policies on Citus: true when the caller
/// sees every deal or `user_id` is its actor (own notifications, own deals).
/// `rel` as for `_may`.
#[pg_extern(schema = "deal_store_internal", name = "_acts_as", stable, parallel_safe)]
fn acts_as(rel: Option<Oid>, user_id: Option<Uuid>) -> bool {
    reading_for(rel, || {
        let r = resolve();
        !r.installed || r.admin || (user_id.is_some() && actor() == user_id)
    })
}

/// The acting user: the user the login role is linked to, or `deal_store.actor`
/// where the role may set it; NULL when there is none.
#[pg_extern(stable, parallel_safe)]
fn current_actor() -> Option<Uuid> {
    let a = actor();
    carry(&resolve(), a);
    a
}

/// Internal: the role the caller acts as outside SECURITY DEFINER functions
/// (its login, or the role it SET ROLE to): who owns a change-feed consumer.
#[pg_extern(schema = "deal_store_internal", name = "_caller_role", stable, parallel_safe)]
fn caller_role() -> String {
    // SAFETY: reads this backend's role state; the name is copied out at once
    unsafe {
        let n = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), false);
        CStr::from_ptr(n).to_string_lossy().into_owned()
    }
}

/// Internal: 42501 unless the caller has `needs` (read, write, review, manage,
/// administer) on the deal. Called by every API function before it touches a deal.
/// `deal_id` may be NULL for `administer` (an act on no one deal, e.g. purge_audit).
#[pg_extern(schema = "deal_store_internal", name = "_require_right", volatile)]
fn require_right_sql(deal_id: Option<Uuid>, needs: Option<&str>) {
    match (deal_id, Right::parse(crate::errors::required(needs, "needs"))) {
        (None, Right::Admin) => {
            let r = resolve();
            if r.installed && !r.admin {
                denied("permission denied: only members of deal_store_admin may do this".into(), "Only members of deal_store_admin may.");
            }
            carry(&r, actor());
        }
        (deal_id, right) => require_right(crate::errors::required(deal_id, "deal_id"), right),
    }
}

/// Trigger (AFTER, FOR EACH STATEMENT on users and deal_members): what was
/// resolved about roles and teams may be stale.
#[pg_trigger]
fn access_changed<'a>(_trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, PgTriggerError> {
    forget();
    Ok(None)
}
