//go:build tools

// Package tools pins helm.sh/helm/v3, whose cmd/helm is the helm program.
package tools

import _ "helm.sh/helm/v3/pkg/action"
