package predict

import (
	"fmt"
	"io"
	"os"

	"github.com/refiners-go/refiners/core/weights"
)

// isTorchFile reports whether path starts as a PyTorch file (a zip archive
// or a legacy pickle) rather than safetensors.
func isTorchFile(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var head [9]byte
	if _, err := io.ReadFull(f, head[:]); err != nil {
		return false
	}
	if head[8] == '{' { // safetensors: an 8-byte length, then the JSON header
		return false
	}
	return string(head[:4]) == "PK\x03\x04" || (head[0] == 0x80 && head[1] == 0x02)
}

// openOfficial reads an official segment_anything checkpoint.
func openOfficial(path string) (*weights.File, error) {
	return nil, fmt.Errorf("sam: %s: official checkpoints are not supported yet", path)
}
