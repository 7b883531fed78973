// Package names is the one validator of the names users give things:
// models and adapters in the store, plugins and their operations. A valid
// name is 1 to 64 of [a-z0-9._-], starts with a letter or a digit, and has
// no "..": it is safe as a file name and in a URL path, and reads the same
// everywhere.
package names

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// MaxLen is the longest name.
const MaxLen = 64

var valid = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// ErrInvalid is wrapped by every error Check returns.
var ErrInvalid = errors.New("invalid")

// Valid reports whether name is a valid name.
func Valid(name string) bool { return valid.MatchString(name) && !strings.Contains(name, "..") }

// Check returns nil for a valid name, else an error naming what it is
// (e.g. "model", "plugin") that wraps ErrInvalid.
func Check(what, name string) error {
	if !Valid(name) {
		return fmt.Errorf("%w %s name %q: want 1-%d of [a-z0-9._-], starting with a letter or digit, without \"..\"", ErrInvalid, what, name, MaxLen)
	}
	return nil
}
