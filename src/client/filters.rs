//! The query filters as command-line flags, one per filterable field of the event declaration
//! (`--user-identity`, `--event-type`, …), plus `--data PATH=VALUE`, `--since` and `--until`:
//! a field added to the declaration gets its flag without another line here.

use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches};

use crate::model::Field;

/// The filters given, as the query string's pairs (`event_data.<path>` for `--data`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterArgs {
    pub pairs: Vec<(String, String)>,
}

const DATA: &str = "data";
const SINCE: &str = "since";
const UNTIL: &str = "until";

impl FromArgMatches for FilterArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut filters = Self::default();
        filters.update_from_arg_matches(matches)?;
        Ok(filters)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for field in Field::ALL {
            if let Some(value) = matches.get_one::<String>(field.name()) {
                self.pairs.push((field.name().to_owned(), value.clone()));
            }
        }
        for data in matches.get_many::<String>(DATA).into_iter().flatten() {
            let Some((path, value)) = data.split_once('=') else {
                return Err(clap::Error::raw(
                    clap::error::ErrorKind::InvalidValue,
                    format!("--data takes PATH=VALUE (e.g. account_id=1346), not `{data}`\n"),
                ));
            };
            self.pairs
                .push((format!("event_data.{path}"), value.to_owned()));
        }
        for bound in [SINCE, UNTIL] {
            if let Some(value) = matches.get_one::<String>(bound) {
                self.pairs.push((bound.to_owned(), value.clone()));
            }
        }
        Ok(())
    }
}

impl Args for FilterArgs {
    fn augment_args(mut command: clap::Command) -> clap::Command {
        for field in Field::ALL {
            command = command.arg(
                Arg::new(field.name())
                    .long(field.name().replace('_', "-"))
                    .value_name("VALUE")
                    .help(format!("Only events whose `{}` is VALUE", field.name()))
                    .help_heading("Filters"),
            );
        }
        command
            .arg(
                Arg::new(DATA)
                    .long(DATA)
                    .value_name("PATH=VALUE")
                    .action(ArgAction::Append)
                    .help(
                        "Only events whose event_data has VALUE (read as JSON) at PATH \
                         (keys separated by `.`); repeatable",
                    )
                    .help_heading("Filters"),
            )
            .arg(
                Arg::new(SINCE)
                    .long(SINCE)
                    .value_name("RFC3339")
                    .help("Only events that occurred at or after this time")
                    .help_heading("Filters"),
            )
            .arg(
                Arg::new(UNTIL)
                    .long(UNTIL)
                    .value_name("RFC3339")
                    .help("Only events that occurred before this time")
                    .help_heading("Filters"),
            )
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        filters: FilterArgs,
    }

    #[test]
    fn every_filterable_field_is_a_flag_and_data_paths_are_prefixed() {
        let mut args = vec!["probe".to_owned()];
        for field in Field::ALL {
            args.push(format!("--{}", field.name().replace('_', "-")));
            args.push(format!("v-{}", field.name()));
        }
        args.extend(["--data", "plan.tier=\"gold\"", "--data", "n=1"].map(String::from));
        args.extend(["--since", "2024-01-01T00:00:00Z"].map(String::from));
        let pairs = Probe::try_parse_from(args).unwrap().filters.pairs;
        assert_eq!(pairs.len(), Field::ALL.len() + 3);
        assert!(pairs.contains(&("user_identity".into(), "v-user_identity".into())));
        assert!(pairs.contains(&("event_data.plan.tier".into(), "\"gold\"".into())));
        assert!(pairs.contains(&("event_data.n".into(), "1".into())));
        assert!(pairs.contains(&("since".into(), "2024-01-01T00:00:00Z".into())));
        let error = Probe::try_parse_from(["probe", "--data", "no-equals"]).unwrap_err();
        assert!(error.to_string().contains("PATH=VALUE"), "{error}");
    }
}
