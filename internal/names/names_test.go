package names

import (
	"errors"
	"strings"
	"testing"
)

func TestNames(t *testing.T) {
	for name, want := range map[string]bool{
		"vit": true, "sd-1.5": true, "lora_v2": true, "0": true, strings.Repeat("a", 64): true,
		"": false, ".": false, "..": false, "a..b": false, ".hidden": false, "-x": false, "_x": false,
		"Upper": false, "a/b": false, "a b": false, "é": false, strings.Repeat("a", 65): false, "a\x00": false,
	} {
		if Valid(name) != want {
			t.Errorf("Valid(%q) = %v, want %v", name, !want, want)
		}
		err := Check("model", name)
		if (err == nil) != want || err != nil && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "model name")) {
			t.Errorf("Check(%q) = %v", name, err)
		}
	}
}
