//! A kubeconfig, both ways the daemon reads one: `--probe-kubeconfig`
//! (kubeconfig.rs: the current cluster's server and CA) and `--kubeconfig`
//! for the pod watcher (kubewatch.rs: kube-rs's `Config` from it).
#![no_main]

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use kube::config::{Config, KubeConfigOptions, Kubeconfig};
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../probe-user/src/sources/kubeconfig.rs"]
mod kubeconfig;

const NAME: &str = "fuzz/kubelet.conf";

fuzz_target!(|data: &[u8]| {
    // kube-rs reads the file with `read_to_string`: non-UTF-8 is a read error.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // What `Kubeconfig::read_from` parses the text with.
    let Ok(mut kc) = Kubeconfig::from_yaml(text) else {
        return;
    };
    if let Err(e) = kubeconfig::target_of(NAME, &kc) {
        let msg = format!("{e:#}");
        assert!(msg.contains(NAME), "error does not name the file: {msg}");
    }
    // The pod watcher: no file may be read here (a mutated path could be
    // /dev/zero), so the references to files go; inline data stays.
    for c in kc.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
        c.certificate_authority = None;
    }
    for a in kc
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
    {
        a.client_certificate = None;
        a.client_key = None;
        a.token_file = None;
        a.exec = None;
        a.auth_provider = None;
    }
    // Nothing in it awaits: one poll finishes it.
    let options = KubeConfigOptions::default();
    let fut = pin!(Config::from_custom_kubeconfig(kc, &options));
    let Poll::Ready(_) = fut.poll(&mut Context::from_waker(Waker::noop())) else {
        panic!("Config::from_custom_kubeconfig did not finish in one poll");
    };
});
