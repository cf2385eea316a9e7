//! The container's /etc/passwd and /etc/group, parsed by hand: the agent is a
//! static binary without NSS, and the files belong to the container anyway.
//!
//! OCI gives numeric uid/gid, so nothing is resolved by name when switching
//! user; the files only supply `HOME` (like runc) and group membership.

/// One line of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// One line of /etc/group.
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Parses passwd(5) text. Malformed lines (wrong field count, non-numeric ids,
/// comments, NIS `+`/`-` entries) are skipped like glibc does.
pub fn parse_passwd(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') || line.starts_with(['+', '-']) {
                return None;
            }
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(Passwd {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
        .collect()
}

/// Parses group(5) text, skipping malformed lines.
#[allow(dead_code)] // see `groups_of`
pub fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end_matches('\r');
            if line.is_empty() || line.starts_with('#') || line.starts_with(['+', '-']) {
                return None;
            }
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(Group {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// The first passwd entry for `uid`.
pub fn by_uid(entries: &[Passwd], uid: u32) -> Option<&Passwd> {
    entries.iter().find(|p| p.uid == uid)
}

/// Gids of the groups that list `user` as a member (supplementary groups).
#[allow(dead_code)] // kept for `exec --user name`, which resolves names host-side today
pub fn groups_of(groups: &[Group], user: &str) -> Vec<u32> {
    groups
        .iter()
        .filter(|g| g.members.iter().any(|m| m == user))
        .map(|g| g.gid)
        .collect()
}

/// `HOME` for `uid` from the container's passwd text, "/" when unknown (runc's default).
pub fn home_for(passwd_text: Option<&str>, uid: u32) -> String {
    passwd_text
        .map(parse_passwd)
        .and_then(|e| by_uid(&e, uid).map(|p| p.home.clone()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        broken:x:notanumber:1::/x:/bin/sh\n\
        short:x:5\n\
        +nis\n\
        app:x:1000:1000:App User,,,:/home/app:/bin/bash\r\n\
        dup:x:1000:1000::/home/dup:/bin/sh\n";

    const GROUP: &str = "root:x:0:\n\
        wheel:x:10:app, daemon\n\
        bad:x:x:app\n\
        audio:x:29:app\n\
        app:x:1000:\n";

    #[test]
    fn passwd_parsing() {
        let e = parse_passwd(PASSWD);
        assert_eq!(e.len(), 4);
        assert_eq!(
            e[0],
            Passwd {
                name: "root".into(),
                uid: 0,
                gid: 0,
                home: "/root".into(),
                shell: "/bin/sh".into()
            }
        );
        let app = by_uid(&e, 1000).unwrap();
        assert_eq!(app.name, "app"); // first match wins
        assert_eq!(app.home, "/home/app");
        assert_eq!(app.shell, "/bin/bash");
        assert!(by_uid(&e, 4242).is_none());
    }

    #[test]
    fn group_parsing() {
        let g = parse_group(GROUP);
        assert_eq!(g.len(), 4);
        assert_eq!(g[1].members, vec!["app", "daemon"]);
        assert!(g[0].members.is_empty());
        assert_eq!(groups_of(&g, "app"), vec![10, 29]);
        assert_eq!(groups_of(&g, "daemon"), vec![10]);
        assert!(groups_of(&g, "nobody").is_empty());
    }

    #[test]
    fn home() {
        assert_eq!(home_for(Some(PASSWD), 0), "/root");
        assert_eq!(home_for(Some(PASSWD), 1000), "/home/app");
        assert_eq!(home_for(Some(PASSWD), 77), "/");
        assert_eq!(home_for(None, 0), "/");
    }
}
