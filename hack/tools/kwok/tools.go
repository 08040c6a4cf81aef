//go:build tools

// Package tools pins kwok, the fake kubelet that makes pods Ready in the
// local control plane. It lives in its own module so its dependency graph
// never bends the Kubernetes one.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
