//go:build tools

// Package tools pins go.etcd.io/etcd/server/v3, whose root package is the etcd program.
package tools

import _ "go.etcd.io/etcd/server/v3/etcdmain"
