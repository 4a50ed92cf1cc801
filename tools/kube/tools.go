//go:build tools

// Package tools pins the packages whose main programs `make tools` builds
// (k8s.io/kubernetes/cmd/kube-apiserver and cmd/kubectl), so `go mod tidy` keeps them.
package tools

import (
	_ "k8s.io/component-base/cli"
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
)
