//go:build tools

// Package tools pins the etcd commands built by build-k8s.sh.
package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
