//! The one passwd lookup both sides make: a process without HOME gets the
//! home directory of its uid, as runc gives it (`/` when none is listed).

/// The home directory of `uid` in the text of a passwd file.
pub fn home_of(passwd: &str, uid: u32) -> Option<&str> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[2].parse() == Ok(uid)).then(|| fields[5])
    })
}

/// HOME when the passwd file does not list `uid` (or there is none).
pub const DEFAULT_HOME: &str = "/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_comes_from_the_uid_s_line() {
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\nbad line\nuser:x:1000:1000::/home/user:/bin/sh\n";
        assert_eq!(home_of(passwd, 0), Some("/root"));
        assert_eq!(home_of(passwd, 1000), Some("/home/user"));
        assert_eq!(home_of(passwd, 5), None);
        assert_eq!(home_of("", 0), None);
    }
}
