//! The `adex` command: `simulate`, `conformance`.
use candle_adex::conformance;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("conformance") => {
            let reports = match conformance::run_files(&args[1..]) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("adex conformance: {e}");
                    return ExitCode::from(2);
                }
            };
            for r in &reports {
                println!("{r}");
            }
            let (p, f, s) = conformance::summarize(&reports);
            println!("{p} passed, {f} failed, {s} skipped");
            if f > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => ExitCode::FAILURE,
    }
}
