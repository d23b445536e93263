//! Each firing-pattern preset produces its pattern under its current step (spike counts and the
//! trend of the inter-spike intervals), and the f-I curve behaves.

use candle_adex::patterns::{fi_curve, Features, Pattern, StepProtocol};
use candle_adex::AdexParameters;

fn features(p: Pattern) -> Features {
    let f = p
        .step_response(&StepProtocol::default())
        .unwrap()
        .features();
    eprintln!("{:>14}: {f:?}", p.name());
    f
}

#[test]
fn every_preset_fires_its_pattern() {
    let all: Vec<(Pattern, Features)> = Pattern::ALL.iter().map(|&p| (p, features(p))).collect();
    for (pattern, f) in &all {
        let (first, last) = (f.first_isi.unwrap_or(0.0), f.last_isi.unwrap_or(0.0));
        let (min, max) = (f.min_isi.unwrap_or(0.0), f.max_isi.unwrap_or(0.0));
        let ok = match pattern {
            // many spikes at a nearly constant interval
            Pattern::Tonic => f.spikes >= 20 && f.cv.unwrap() < 0.05,
            // intervals lengthen several-fold
            Pattern::Adapting => f.spikes >= 5 && last > 3.0 * first && f.cv.unwrap() > 0.3,
            // two or three fast spikes, then long regular intervals
            Pattern::InitialBurst => f.spikes >= 5 && first < 10.0 && last > 5.0 * first,
            // short intra-burst and long inter-burst intervals alternate, several bursts
            Pattern::Bursting => {
                let long = Pattern::Bursting
                    .step_response(&StepProtocol::default())
                    .unwrap()
                    .isis()
                    .iter()
                    .filter(|&&d| d > 10.0 * min)
                    .count();
                min < 10.0 && max > 10.0 * min && long >= 3
            }
            // no steady interval: large variation without a burst's two-level structure
            Pattern::Irregular => f.spikes >= 10 && f.cv.unwrap() > 0.4 && max < 20.0 * min,
            // a few spikes right after the onset, then silence
            Pattern::Transient => (1..=3).contains(&f.spikes) && f.last_spike.unwrap() < 100.0,
            // a delayed first spike, then shortening intervals
            Pattern::Delayed => f.latency.unwrap() > 25.0 && last < 0.8 * first,
        };
        assert!(ok, "{}: {f:?}", pattern.name());
    }
    // the patterns differ from each other (no two presets give the same train)
    for (k, (_, a)) in all.iter().enumerate() {
        for (_, b) in &all[k + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn names_round_trip_and_unknown_names_list_the_valid_ones() {
    for p in Pattern::ALL {
        assert_eq!(Pattern::from_name(p.name()).unwrap(), p);
    }
    let e = Pattern::from_name("chattering").unwrap_err().to_string();
    assert!(
        e.contains("chattering") && e.contains("initial-burst"),
        "{e}"
    );
}

#[test]
fn without_the_step_nothing_fires_and_more_current_fires_more() {
    let quiet = StepProtocol {
        gain: 0.0,
        ..Default::default()
    };
    for p in Pattern::ALL {
        assert_eq!(
            p.step_response(&quiet).unwrap().spike_times.len(),
            0,
            "{}",
            p.name()
        );
    }
    let (p, current) = Pattern::Tonic.naud().to_adex(1e-4);
    let currents: Vec<f64> = (0..12).map(|k| current * k as f64 / 6.0).collect();
    let rates = fi_curve(&p, &currents, 0.5, 0.1).unwrap();
    assert_eq!(rates[0], 0.0);
    assert!(rates.windows(2).all(|w| w[0] <= w[1]), "{rates:?}");
    // the tonic preset at its own current: ~105 Hz (9.5 ms intervals)
    assert!((rates[6] - 105.0).abs() < 10.0, "{rates:?}");
    let e = fi_curve(&AdexParameters::default(), &[1.0], 0.0005, 0.0).unwrap_err();
    assert!(e.to_string().contains("duration"), "{e}");
}
