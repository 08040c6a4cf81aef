//go:build tools

// Package tools pins age, the encryption sops uses for its age recipients:
// the tests make their identities and recipients with the real age-keygen.
package tools

import (
	_ "filippo.io/age/cmd/age"
	_ "filippo.io/age/cmd/age-keygen"
)
