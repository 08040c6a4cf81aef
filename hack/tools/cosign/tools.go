//go:build tools

// Package tools pins cosign v2, which signs images in the classic layout
// (a `sha256-<digest>.sig` tag holding a simple-signing payload layer): the
// tests sign with the real cosign, offline, and verify with it as an oracle.
package tools

import (
	_ "github.com/sigstore/cosign/v2/cmd/cosign"
)
