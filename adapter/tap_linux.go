package adapter

import "github.com/tapminiport/tapminiport/tapdev"

// OpenTAP is the default Opener: the hardware TAP by name, created when
// missing (tapdev says whether it created it).
func OpenTAP(name string) (Device, bool, error) {
	d, created, err := tapdev.OpenTAP(name, tapdev.Options{})
	if err != nil {
		return nil, false, err
	}
	return d, created, nil
}

// ConfigureTAP is the default Configure: MTU, bridge, link up, in the
// current namespace.
func ConfigureTAP(name string, mtu int, bridge string) error {
	return tapdev.ConfigureLink("", name, tapdev.LinkConfig{MTU: mtu, Up: true, Master: bridge})
}
