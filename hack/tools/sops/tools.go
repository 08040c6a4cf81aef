//go:build tools

// Package tools pins sops, the tool Flux users encrypt Secrets with: the
// tests encrypt with the real one (and decrypt with it as an oracle), and the
// operator image carries the same version. Its own module, so its dependency
// graph never bends another tool's.
package tools

import (
	_ "github.com/getsops/sops/v3/cmd/sops"
)
