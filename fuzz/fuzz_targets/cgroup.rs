//! A cgroup path and a `/proc/PID/cgroup`, as attribution reads them
//! (`sources/cgroup.rs`): the file parsed, the path that names an owner
//! chosen, every path read for a pod uid and container id. Both come from
//! outside: cgroup names are whatever the runtimes (or anyone with write
//! access to the cgroup tree) chose.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../probe-user/src/sources/cgroup/layout.rs"]
mod layout;

const NAME: &str = "fuzz/proc/4242/cgroup";

fn check(o: &layout::Owner) {
    assert!(o.pod_uid.is_some() || o.container_id.is_some(), "{o:?}");
    if let Some(u) = &o.pod_uid {
        assert!(layout::valid_uid(u), "{o:?}");
    }
    if let Some(c) = &o.container_id {
        assert!(layout::valid_container_id(c), "{o:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    // The resolver reads the file lossily, as here.
    let text = String::from_utf8_lossy(data);
    if let Some(o) = layout::parse_path(&text) {
        check(&o);
    }
    match layout::parse_proc_cgroup(NAME, &text) {
        Ok(p) => {
            if let Some((path, o)) = p.owner() {
                check(&o);
                assert_eq!(layout::parse_path(path).as_ref(), Some(&o));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(NAME), "error does not name the file: {msg}");
        }
    }
});
