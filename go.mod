module github.com/refiners-go/refiners

go 1.26

require github.com/sugarme/gotch v0.9.1

require github.com/nlpodyssey/safetensors v0.0.0-20250209183917-bfb01cc25f7c

require gopkg.in/yaml.v3 v3.0.1 // indirect

// scripts/setup-gotch.sh prepares this patched copy; see its header.
replace github.com/sugarme/gotch => /opt/refiners-go/gotch-v0.9.1-p1
