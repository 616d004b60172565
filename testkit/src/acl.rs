//! `redis-server`s with ACL users: the `default` user is off, and the harness logs
//! in as `admin` (random password) for its own commands.

use crate::RedisServer;

impl RedisServer {
    /// Starts a server that keeps nothing on disk, whose `default` user is off (so
    /// a client without credentials gets `NOAUTH`), with a user `admin` allowed
    /// everything that every harness method ([`RedisServer::cmd`], `info`,
    /// `numsub`, `restart`…) logs in as. Add users with [`RedisServer::acl_setuser`].
    pub async fn start_acl() -> RedisServer {
        let mut server = RedisServer::new(&["--save", "", "--appendonly", "no"], false);
        let password = crate::random_password();
        let admin = ["on", &format!(">{password}"), "~*", "&*", "+@all"];
        server.acl = vec![
            ("default".into(), vec!["off".into()]),
            (
                "admin".into(),
                admin.iter().map(|r| r.to_string()).collect(),
            ),
        ];
        server.login = Some(("admin".into(), password));
        server.launch().await
    }

    /// `ACL SETUSER <user> <rules…>` as admin, e.g.
    /// `acl_setuser(&["alice", "on", ">pw", "+@all", "~*", "&*"])`. The rules are
    /// also kept for [`RedisServer::restart`] (appended to the user's earlier ones,
    /// which applies them in the same order).
    pub async fn acl_setuser(&mut self, user_and_rules: &[&str]) {
        let mut args = vec!["ACL", "SETUSER"];
        args.extend_from_slice(user_and_rules);
        self.cmd(&args).await;
        let (user, rules) = user_and_rules.split_first().expect("a user name");
        let rules = rules.iter().map(|r| r.to_string());
        match self.acl.iter_mut().find(|(u, _)| u == user) {
            Some((_, kept)) => kept.extend(rules),
            None => self.acl.push((user.to_string(), rules.collect())),
        }
    }
}
